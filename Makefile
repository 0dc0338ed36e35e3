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

# The benchmark's peers (DuckDB, ConnectorX): an extra of their own, never installed by the other targets.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	touch $(BENCH_STAMP)

# The peer table of issue 12 (10M rows); e.g. make bench-peers PEERS_ARGS="--rows 1000000 --repeat 2".
PEERS_ARGS ?= --rows 10000000
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
