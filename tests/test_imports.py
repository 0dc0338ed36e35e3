"""What loading the code location costs every process (code server, daemon, run process)."""

from __future__ import annotations

import json
import subprocess
import sys

# Needed only by the exports that use them (xlsx, pdf, S3) or only once a run streams (DuckDB and
# its scanner, ~70 MB of code; asyncpg for the server's CSV).
LAZY = ("xlsxwriter", "fpdf", "boto3", "botocore", "pyarrow.dataset", "adbc_driver_manager.dbapi", "duckdb", "asyncpg")


def test_loading_the_code_location_imports_no_module_it_does_not_need():
    probe = f"import sys, json, export_platform.definitions; print(json.dumps([m for m in {LAZY!r} if m in sys.modules]))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(loaded) == []


def test_planning_builds_no_polars_data_at_import():
    """(Building the definitions validates the declared recurring exports, which may.)"""
    probe = (
        "import polars as pl, json; created = []; original = pl.Series.__init__\n"
        "def spy(self, *a, **k): created.append(1); original(self, *a, **k)\n"
        "pl.Series.__init__ = spy\n"
        "import export_platform.planning.plan; print(json.dumps(len(created)))"
    )
    created = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(created) == 0
