"""The plan step of every export job: check the run config (the plan's canonical form, or a
Launchpad user's edit of it) into the plan the other steps read, and check it against the
database and its format before any row is read."""

import dagster as dg

from ..catalog.registry import ExportType
from ..naming import INCREMENTAL_TAG, request_id_of, session_name
from ..planning.config import ExportConfig
from ..planning.plan import ExportPlan, RequestError, plan_config
from ..requests import table as rt
from ..requests.store import RequestStore
from ..resources.postgres import IncrementalRefused, PostgresResource
from ..resources.storage import ExportStorage
from .preflight import preflight
from .staging import allowed_output


def plan_op_name(export_type_name: str) -> str:
    # Op names must be unique across the code location, and each type's plan op has its own config.
    return f"plan_{export_type_name}"


def build_plan_op(export_type: ExportType, config_class: type[ExportConfig]) -> dg.OpDefinition:
    @dg.op(
        name=plan_op_name(export_type.name),
        description=f"Check the {export_type.name} request against the registry and its format (row limit, "
        "number precision, time zone) and build its query.",
    )
    def plan(
        context: dg.OpExecutionContext,
        config: config_class,  # type: ignore[valid-type]
        requests: RequestStore,
        postgres: PostgresResource,
        storage: ExportStorage,
    ) -> ExportPlan:
        if config.output_path is not None:  # refused before the request row or the database is touched
            allowed_output(storage, config.output_path)
        request_id = request_id_of(context.run.tags)
        if request_id is not None:
            requests.run(rt.mark_running(request_id, context.run_id))
        lower = None
        if config.incremental is not None:
            if context.run.tags.get(INCREMENTAL_TAG) != config.incremental.key:
                raise dg.Failure(
                    description=f"an incremental run must carry the tag {INCREMENTAL_TAG}={config.incremental.key}: "
                    "the run queue lets one run per key read from its mark at a time"
                )
            lower = requests.run(rt.high_water(config.incremental.key)).scalar()
        try:
            # Dagster has checked the config's types; this checks what they cannot say (names of
            # columns and filters, values, options), as the sensor did when it made this config.
            result = plan_config(export_type.name, config.model_dump(), lower)
            if result.incremental is not None:
                postgres.check_incremental()
            decisions = preflight(result, postgres, session_name(context.run_id))
        except RequestError as error:
            raise dg.Failure(description=str(error), metadata={"field": error.field}) from None
        except IncrementalRefused as error:
            raise dg.Failure(description=str(error)) from None
        context.add_output_metadata(
            {
                "format": result.format.value,
                "columns": ", ".join(result.columns),
                "filters": result.filters,
                "incremental_from": (lower or "the beginning") if result.incremental else "not incremental",
                "chunks": result.chunks,
                "preflight": decisions,
            }
        )
        return result

    return plan
