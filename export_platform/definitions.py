import dagster as dg

from .jobs import EXPORT_JOBS
from .resources.postgres import PostgresResource
from .resources.storage import LocalStorage

defs = dg.Definitions(
    jobs=EXPORT_JOBS,
    resources={"postgres": PostgresResource(), "storage": LocalStorage()},
)
