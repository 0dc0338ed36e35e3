"""Imports run one way: every module of export_platform imports its own floor or lower, and no two
modules import each other (lazily or not). The floors are docs/reference.md's "Layout" table."""

from __future__ import annotations

import ast
from pathlib import Path

import export_platform

PACKAGE = Path(export_platform.__file__).parent

# The most specific prefix decides a module's floor.
FLOORS = {
    "export_platform": 0,  # the package itself, and naming, units, dagster_compat, home, links, run_failures
    "export_platform.errors": 0,
    "export_platform.catalog": 1,
    "export_platform.planning": 2,
    "export_platform.assets": 2,
    "export_platform.sinks": 3,
    "export_platform.resources": 4,
    "export_platform.requests": 5,
    "export_platform.ops": 6,
    "export_platform.jobs": 7,
    "export_platform.sensors": 8,
    "export_platform.schedules": 8,
    "export_platform.delivery": 8,
    "export_platform.definitions": 9,
    "export_platform.workers": 10,
    "export_platform.tooling": 11,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path) -> set[str]:
    """Every export_platform module `name` imports, at the top or inside a function."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") if node.level else node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def floor(module: str) -> int:
    prefix = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS[prefix]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read():
    # A reader that found nothing would pass everything below.
    assert "export_platform.requests.store" in GRAPH["export_platform.definitions"]
    assert "export_platform.links" in GRAPH["export_platform.resources.storage"]
    assert "export_platform.ops.plan" in GRAPH["export_platform.jobs"]


def test_no_import_runs_up_a_floor():
    back = sorted(
        f"{source} (floor {floor(source)}) imports {target} (floor {floor(target)})"
        for source, targets in GRAPH.items()
        for target in targets
        if floor(target) > floor(source)
    )
    assert back == []


def test_no_two_modules_import_each_other():
    assert cycles(GRAPH) == []


def test_the_checks_catch_a_back_arrow_and_a_cycle():
    graph = {"export_platform.sinks.x": {"export_platform.ops.y"}, "export_platform.ops.y": {"export_platform.sinks.x"}}
    assert floor("export_platform.ops.y") > floor("export_platform.sinks.x")
    assert cycles(graph) == [["export_platform.ops.y", "export_platform.sinks.x"]]
