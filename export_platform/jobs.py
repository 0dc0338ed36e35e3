"""One job per export type, all made by `build_export_job` from the registry's declarations."""

from __future__ import annotations

from typing import Any

import dagster as dg

from .planning.config import config_class_for
from .catalog.export_types import REGISTRY
from .catalog.formats import ExportFormat
from .ops.chunked import combine_chunks, discard_chunk_parts, extract_chunk, split_export
from .ops.extract import extract_export
from .ops.plan import build_plan_op, plan_op_name
from .ops.publish import publish_export
from .planning.plan import ExportPlan
from .catalog.registry import ExportType
from .naming import EXPORT_TYPE_TAG, ISOLATED_TAG, MAX_RUNTIME_TAG


def _tags(export_type: ExportType) -> dict[str, str]:
    tags = {EXPORT_TYPE_TAG: export_type.name, MAX_RUNTIME_TAG: str(export_type.max_runtime_seconds)}
    return tags | ({ISOLATED_TAG: "true"} if export_type.isolated else {})


def launchpad_config(export_type: ExportType) -> dict[str, Any]:
    """The config the Launchpad opens with: the format, every column and every filter (unset), so
    that a person edits what is there instead of finding the fields with Ctrl+Space. Only the
    Launchpad uses it: a run given any config (requests, schedules, the CLI) takes that config whole."""
    config = {
        "format": ExportFormat.csv.value,
        "columns": list(export_type.default_columns or export_type.columns),
        "filters": {f.name: None for f in export_type.filters},
    }
    return {"ops": {plan_op_name(export_type.name): {"config": config}}}


def build_export_job(export_type: ExportType, plan_op: dg.OpDefinition | None = None) -> dg.JobDefinition:
    plan_op = plan_op or build_plan_op(export_type, config_class_for(export_type))

    @dg.job(
        name=export_type.job_name,
        description=export_type.description,
        tags=_tags(export_type),
        config=launchpad_config(export_type),
        # The steps run one after another (chunks are threads inside extract); a process per
        # step would only add seconds of start-up to every export.
        executor_def=dg.in_process_executor,
    )
    def export_job() -> None:
        plan = plan_op()
        publish_export(plan, extract_export(plan))

    return export_job


def build_chunked_job(
    export_type: ExportType,
    plan_op: dg.OpDefinition | None = None,
    executor_def: dg.ExecutorDefinition = dg.multiprocess_executor,
) -> dg.JobDefinition:
    """The type's export with each key-range chunk a step of its own, for an executor that runs
    steps in separate processes (the default) or pods (dagster-k8s's k8s_job_executor); see
    ops/chunked.py for what is consistent across chunks."""
    plan_op = plan_op or build_plan_op(export_type, config_class_for(export_type))
    on_failure = {discard_chunk_parts}

    @dg.job(
        name=export_type.chunked_job_name,
        description=f"{export_type.description} Chunked: one step per key range (set chunks), each retried alone.",
        tags=_tags(export_type),
        config=launchpad_config(export_type),
        executor_def=executor_def,
    )
    def chunked_job() -> None:
        plan = plan_op()
        chunks = split_export(plan).map(lambda task: extract_chunk.with_hooks(on_failure)(plan, task))
        publish_export(plan, combine_chunks.with_hooks(on_failure)(plan, chunks.collect()))

    return chunked_job


def build_jobs(export_type: ExportType) -> list[dg.JobDefinition]:
    """The type's job, and its chunked job when it declares a chunk key; one plan op for both, so
    both take the same config."""
    plan_op = build_plan_op(export_type, config_class_for(export_type))
    chunked = [build_chunked_job(export_type, plan_op)] if export_type.chunk_key else []
    return [build_export_job(export_type, plan_op), *chunked]


def run_config_for(plan: ExportPlan) -> dict[str, Any]:
    """Run config that makes the job export what an already-checked plan describes: its canonical
    form, which the plan op checks back into an equal plan."""
    return {"ops": {plan_op_name(plan.export_type): {"config": plan.config}}}


_JOBS = [build_jobs(t) for t in REGISTRY]
EXPORT_JOBS = [jobs[0] for jobs in _JOBS]
CHUNKED_JOBS = [job for jobs in _JOBS for job in jobs[1:]]
