"""The export types in Dagster's Asset Catalog: what each type has produced, over time.

Each export type is the asset `exports/<type>`, downstream of its source relation (the external
asset `postgres/<schema>/<relation>`). The product stays job-based: a file is published by the
type's job (request, schedule or Launchpad run), whose publish step logs an `AssetMaterialization`
of the type's asset with the file's numbers (the Catalog plots them over time) and the evaluation of
the check "rows written = rows in the snapshot" (docs/design.md says why events, not asset jobs).

Everything here is built from the registry's declarations: a new export type needs nothing here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg

from .catalog.registry import ExportType, Registry

EXPORTS_GROUP = "exports"
SOURCES_GROUP = "sources"
ROWS_CHECK = "rows_match_snapshot"
ROWS_CHECK_DESCRIPTION = (
    "Rows written = rows in the snapshot: the file holds exactly the rows the export's snapshot counted. "
    "Evaluated by every export's publish step (a file that fails it is never published); executing it "
    "here re-evaluates the latest published file from its recorded counts."
)
# Materialization metadata (numbers are plotted in the Catalog's Plots tab).
ROW_COUNT = "dagster/row_count"
SNAPSHOT_ROWS = "snapshot_rows"
LINK = "link"


def source_key(export_type: ExportType) -> dg.AssetKey:
    """The relation the type reads, e.g. postgres/users or postgres/billing/invoices."""
    return dg.AssetKey(["postgres", *export_type.relation.split(".")])


def export_key(export_type_name: str) -> dg.AssetKey:
    return dg.AssetKey([EXPORTS_GROUP, export_type_name])


def _columns(export_type: ExportType) -> dg.TableSchema:
    filters: dict[str, list[str]] = {}
    for f in export_type.filters:
        filters.setdefault(f.column, []).append(f.name)
    return dg.TableSchema(
        columns=[
            dg.TableColumn(c, type="", description=f"filters: {', '.join(filters[c])}" if c in filters else None)
            for c in export_type.columns
        ]
    )


def export_spec(export_type: ExportType) -> dg.AssetSpec:
    jobs = [export_type.job_name, *([export_type.chunked_job_name] if export_type.chunk_key else [])]
    return dg.AssetSpec(
        key=export_key(export_type.name),
        deps=[source_key(export_type)],
        description=f"{export_type.description} Every file published by {' or '.join(jobs)}.".strip(),
        group_name=EXPORTS_GROUP,
        kinds={"polars"},
        owners=list(export_type.owners),
        metadata={
            "dagster/column_schema": _columns(export_type),
            "jobs": ", ".join(jobs),
            "order_by": ", ".join(export_type.order_by),
        },
    )


def source_spec(export_type: ExportType) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=source_key(export_type),
        description=f"The Postgres relation {export_type.relation} (EXPORT_PLATFORM_DATABASE_URL), read by the "
        "exports downstream; not managed by Dagster.",
        group_name=SOURCES_GROUP,
        kinds={"postgres"},
    )


def catalog_specs(registry: Registry) -> list[dg.AssetSpec]:
    """Every export type's asset, and each source relation once."""
    sources = {source_key(t): source_spec(t) for t in registry}
    return [*sources.values(), *(export_spec(t) for t in registry)]


def _recorded(materialization: dg.AssetMaterialization | None, check_key: dg.AssetCheckKey) -> dg.AssetCheckResult:
    if materialization is None:
        return dg.AssetCheckResult(
            asset_key=check_key.asset_key, check_name=check_key.name, passed=False,
            severity=dg.AssetCheckSeverity.WARN, description="no file has been published yet",
        )
    recorded = {k: v.value for k, v in materialization.metadata.items()}
    return rows_check(check_key.asset_key, recorded.get(ROW_COUNT), recorded.get(SNAPSHOT_ROWS))


def build_rows_checks(registry: Registry) -> dg.AssetChecksDefinition:
    """The check of every export type, declared so that the Catalog shows it (Dagster lists only
    declared checks); its evaluations come from the publish steps."""
    specs = [dg.AssetCheckSpec(ROWS_CHECK, asset=export_key(t.name), description=ROWS_CHECK_DESCRIPTION) for t in registry]

    @dg.multi_asset_check(name="export_row_counts", specs=specs, can_subset=True, description=ROWS_CHECK_DESCRIPTION)
    def export_row_counts(context) -> Iterator[dg.AssetCheckResult]:  # an AssetCheckExecutionContext
        for check_key in context.selected_asset_check_keys:
            event = context.instance.get_latest_materialization_event(check_key.asset_key)
            yield _recorded(event.asset_materialization if event else None, check_key)

    return export_row_counts


def rows_check(
    asset_key: dg.AssetKey, rows: int | None, snapshot_rows: int | None, run_id: str | None = None
) -> dg.AssetCheckEvaluation:
    """The check's evaluation; `run_id` names the run when the evaluation is reported outside it."""
    passed = rows is not None and rows == snapshot_rows
    return dg.AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=ROWS_CHECK,
        passed=passed,
        metadata={"rows_written": rows, SNAPSHOT_ROWS: snapshot_rows, **({"run_id": run_id} if run_id else {})},
        description=None if passed else f"wrote {rows} rows but the snapshot counted {snapshot_rows}; file discarded",
    )


def materialization(
    export_type_name: str, metadata: Mapping[str, Any], description: str
) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(asset_key=export_key(export_type_name), description=description, metadata=metadata)
