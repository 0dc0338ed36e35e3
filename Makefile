# The two commands a newcomer runs: `make demo` and `make test`. Needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast bench dev clean

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

clean:
	rm -rf $(VENV) .export_platform
