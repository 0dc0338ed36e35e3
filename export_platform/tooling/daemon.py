"""`dagster-daemon`, with the sensor daemon's loop shortened: `python -m export_platform.tooling.daemon run ...`.

Dagster's sensor daemon sleeps a fixed 5 s between loops, so the request sensor, declared at 2 s,
ran every ~5 s and a request waited 4-5 s before it was even QUEUED. The sensors' own
`minimum_interval_seconds` still bound how often each is evaluated; this only stops the loop
from sleeping past them. Everything else is Dagster's own daemon.
"""

from __future__ import annotations

from ..dagster_compat import daemon_main, set_sensor_loop_seconds

SENSOR_LOOP_SECONDS = 0.5

if __name__ == "__main__":
    set_sensor_loop_seconds(SENSOR_LOOP_SECONDS)
    daemon_main()()
