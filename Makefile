# A newcomer's commands: `make demo`, `make test`, `make dev`. Needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: demo test test-fast bench bench-peers dev stop clean

# The Dagster UI's port for `make dev` (make dev PORT=3300), and that of `serve`, which dev starts
# too: signed downloads on the request rows and the run pages (make dev SERVE_PORT=8090).
PORT ?= 3000
SERVE_PORT ?= 8080

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "export_platform needs Python 3.11+; run: make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	# .pyc for everything a run imports, even where PYTHONDONTWRITEBYTECODE is set (a fresh run
	# process would otherwise recompile the project, and whatever pip left uncompiled, each time).
	$(BIN)/python -m compileall -q -j 0 export_platform $(VENV)/lib
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/export-platform demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/export_vs_copy.py

# The benchmark's peer ConnectorX: an extra of its own, never installed by the other targets (DuckDB,
# the other peer, is the platform's own reader).
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	touch $(BENCH_STAMP)

# The peer table of issues 12 and 23 (1M and 10M rows, best of 2, then the same exports as warm-worker
# requests): it ends with the Markdown table for benchmarks/RESULTS.md. On a shared machine, e.g.
# make bench-peers PEERS_ARGS="--rows 1000000 2000000 --repeat 2".
PEERS_ARGS ?= --rows 1000000 10000000 --repeat 2
bench-peers: $(BENCH_STAMP)
	$(BIN)/python benchmarks/export_vs_copy.py --peers $(PEERS_ARGS)

dev: $(STAMP)
	$(BIN)/export-platform dev --port $(PORT) --serve $(SERVE_PORT)

# Stops the embedded Postgres that the commands above start and leave running.
stop:
	test ! -x $(BIN)/export-platform || $(BIN)/export-platform db stop

# Stops the database first: deleting its data directory under a running server leaves it orphaned.
clean: stop
	rm -rf $(VENV) .export_platform *.egg-info
