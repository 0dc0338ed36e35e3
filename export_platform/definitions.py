import os
import warnings

import dagster as dg

from .assets import build_rows_checks, catalog_specs
from .catalog.export_types import REGISTRY
from .jobs import CHUNKED_JOBS, EXPORT_JOBS
from .ops.retention import retention_cleanup
from .resources.database_url import DATABASE_URL_ENV, require_database_url
from .resources.postgres import PostgresResource
from .requests.store import RequestStore
from .resources.storage import STORAGE_URL_ENV, storage_for
from .sensors.request_sensor import build_request_sensor
from .schedules.recurring import build_recurring_schedules
from .schedules.retention import retention_schedule
from .sensors.run_status import build_run_status_sensors

# Dagster 1.13 warns that `owners` is beta whenever it copies a sensor to bind its resources, though
# no sensor here sets owners; every process loading this module (UI, daemon, runs) would print it.
warnings.filterwarnings("ignore", message="Parameter `owners` of initializer `SensorDefinition", category=dg.BetaWarning)

# A process that loads the code location without its database fails here, naming the variable,
# rather than at its first sensor tick or run; the value itself is read at run time (EnvVar).
require_database_url()

defs = dg.Definitions(
    assets=catalog_specs(REGISTRY),
    asset_checks=[build_rows_checks(REGISTRY)],
    jobs=[*EXPORT_JOBS, *CHUNKED_JOBS, retention_cleanup],
    schedules=[retention_schedule, *build_recurring_schedules()],
    sensors=[build_request_sensor(EXPORT_JOBS), *build_run_status_sensors([*EXPORT_JOBS, *CHUNKED_JOBS])],
    resources={
        "postgres": PostgresResource(url=dg.EnvVar(DATABASE_URL_ENV)),
        # The scheme picks the implementation when the code location loads; the values are
        # resolved at run time.
        "storage": storage_for(os.environ.get(STORAGE_URL_ENV)),
        "requests": RequestStore(url=dg.EnvVar(DATABASE_URL_ENV)),
    },
)
