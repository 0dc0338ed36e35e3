import dagster as dg

from .jobs import EXPORT_JOBS
from .resources.postgres import PostgresResource
from .resources.requests import RequestStore
from .resources.storage import LocalStorage
from .sensors.request_sensor import build_request_sensor
from .sensors.run_status import build_run_status_sensors

defs = dg.Definitions(
    jobs=EXPORT_JOBS,
    sensors=[build_request_sensor(EXPORT_JOBS), *build_run_status_sensors(EXPORT_JOBS)],
    resources={"postgres": PostgresResource(), "storage": LocalStorage(), "requests": RequestStore()},
)
