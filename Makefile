# Developer entry points. `make demo` and `make test` create the virtualenv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv system-deps bench-deps demo test lint format docs clean

venv: $(VENV)/.installed

# Re-installs whenever pyproject.toml changes (new dependency); the stamp file marks success.
# An existing venv is kept as is: re-running `venv` over it could re-point it at another Python.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[test]'
	touch $@

# Debian packages the tests use for real (redis-server, chromium); installs only what is missing.
system-deps:
	bash scripts/system-deps.sh

bench-deps: system-deps
	bash scripts/system-deps.sh bench

# Echo backends + waypost + Envoy on the example policies; prints curl lines, Ctrl-C stops.
demo: venv
	$(BIN)/python -m waypost.demo

# Unit and end-to-end tests (real Envoys on loopback), two workers.
test: venv system-deps
	$(BIN)/pytest -n 2

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The generated files: the editors' JSON Schema and the policy reference (tests fail when stale).
docs: venv
	$(BIN)/python -m waypost schema > schema/waypost.schema.json
	$(BIN)/python -m waypost docs > docs/reference.md

clean:
	rm -rf .demo test-artifacts .pytest_cache .ruff_cache
