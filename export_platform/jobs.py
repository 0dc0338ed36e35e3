"""One job per export type, all made by `build_export_job` from the registry's declarations."""

from __future__ import annotations

from typing import Any

import dagster as dg

from .config import config_class_for
from .export_types import REGISTRY
from .ops.export import build_plan_op, extract_export, plan_op_name, publish_export
from .planning import ExportPlan
from .registry import ExportType


def build_export_job(export_type: ExportType) -> dg.JobDefinition:
    plan_op = build_plan_op(export_type, config_class_for(export_type))

    @dg.job(
        name=export_type.job_name,
        description=export_type.description,
        tags={"export_type": export_type.name, "dagster/max_runtime": str(export_type.max_runtime_seconds)},
        # The steps run one after another on one stream; a process per step would only add
        # seconds of start-up to every export.
        executor_def=dg.in_process_executor,
    )
    def export_job() -> None:
        plan = plan_op()
        publish_export(plan, extract_export(plan))

    return export_job


def run_config_for(plan: ExportPlan) -> dict[str, Any]:
    """Run config that makes the job export what an already-checked plan describes."""
    config: dict[str, Any] = {
        "format": plan.format.name,
        "filters": plan.filters,
        "columns": list(plan.columns),
        **plan.options.model_dump(mode="json"),
    }
    if plan.output_path:
        config["output_path"] = plan.output_path
    if plan.incremental:
        config["incremental"] = {"column": plan.incremental.column, "key": plan.incremental.key}
    return {"ops": {plan_op_name(plan.export_type): {"config": config}}}


EXPORT_JOBS = [build_export_job(t) for t in REGISTRY]
