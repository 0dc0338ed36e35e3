"""`python -m export_platform.workers [--count N]`: the same as `export-platform workers`."""

import argparse

from .supervisor import serve

parser = argparse.ArgumentParser(prog="export_platform.workers", description="keep N warm run workers alive")
parser.add_argument("--count", type=int, help="workers to keep alive (default: the run launcher's `workers`)")
parser.add_argument("--max-runs", type=int, help="replace each worker after this many runs (default: the run launcher's)")
parser.add_argument(
    "--grace-period", type=float, help="seconds a stopping worker may take to finish its run (default: the run launcher's)"
)
args = parser.parse_args()
serve(args.count, args.max_runs, args.grace_period)
