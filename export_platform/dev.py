"""`export-platform dev`: the warm run-worker pool, the daemon and the webserver, on this project's
instance, until Ctrl-C.

Not `dagster dev`: that starts Dagster's own daemon entry point, whose sensor loop sleeps 5 s,
and no run workers. The daemon and the pool log to files in DAGSTER_HOME; the webserver to the
terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .instance import INSTANCE_YAML, prepare_dagster_home, start_daemon, start_workers


def serve(host: str, port: int) -> int:
    from .resources.requests import RequestStore

    env = {**os.environ, **prepare_dagster_home()}
    RequestStore().migrate()
    home = Path(env["DAGSTER_HOME"])
    print(f"DAGSTER_HOME={home}\nlogs: {home / 'workers.log'}, {home / 'daemon.log'}", flush=True)
    children = [start_workers(env, home / "workers.log"), start_daemon(env, home / "daemon.log")]
    webserver = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-webserver")), "-m", "export_platform.definitions", "-h", host, "-p", str(port)],
        env=env, cwd=INSTANCE_YAML.parent,
    )
    children.append(webserver)
    try:
        return webserver.wait()
    except KeyboardInterrupt:  # Ctrl-C reached every child too (same process group)
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            child.wait(timeout=60)
