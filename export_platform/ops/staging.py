"""Where a run's file is written before it is published: alone in a folder of the run's, so that a
failure removes all of it; beside an output_path's target (publishing is then a rename) or in the
storage's temp folder."""

import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from ..planning.plan import ExportPlan
from ..resources.storage import ExportStorage, OutputRefused


@dataclass(frozen=True)
class StagedFile:
    path: str
    rows: int
    expected_rows: int
    started: float
    sha256: str
    bytes: int
    high_water: str | None = None  # an incremental export's upper bound (always set for one)


def allowed_output(storage: ExportStorage, output_path: str) -> Path:
    """The resolved target of an `output_path`, if the storage's allow-list has its folder."""
    try:
        return storage.output_target(output_path)
    except OutputRefused as refused:
        raise dg.Failure(description=f"output_path: {refused}", metadata={"field": "output_path"}) from None


def temp_path(context: dg.OpExecutionContext, plan: ExportPlan, storage: ExportStorage) -> Path:
    """The run's file being written, alone in a folder of the run's (with whatever its writer
    spools), so that a failure removes all of it: in the storage's temp folder, or for an output
    path beside the target, where publishing is a rename."""
    if not plan.output_path:
        return storage.run_temp_folder(context.run_id) / f"export.{plan.format.extension}"
    target = allowed_output(storage, plan.output_path)
    folder = target.parent / f".{target.name}.{context.run_id}.tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / target.name


def discard_staging(path: Path, run_id: str) -> None:
    """Remove a run's file being written and everything beside it in its folder (the run's own)."""
    if run_id in path.parent.name:
        shutil.rmtree(path.parent, ignore_errors=True)
