import dagster as dg

from ..ops.retention import retention_cleanup

retention_schedule = dg.ScheduleDefinition(
    name="retention_cleanup_daily",
    job=retention_cleanup,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day at 03:00 UTC.",
)
