# Developer entry points. `make demo` and `make test` create the virtualenv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv lock lock-add system-deps bench-deps demo test lint format docs clean

venv: $(VENV)/.installed

# Installs exactly what requirements-test.lock pins, every file checked against its hash, then
# waypost itself without dependencies; re-runs whenever a lock or pyproject.toml changes. An
# existing venv is kept as is: re-running `venv` over it could re-point it at another Python.
$(VENV)/.installed: pyproject.toml requirements-test.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements-test.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Re-pin every dependency to the newest release pyproject.toml allows: a deliberate commit of its
# own, with the suite green. requirements.lock is what waypost runs on (the Docker image);
# requirements-test.lock adds the test tools, constrained to the same runtime pins. Hashes, no
# index URLs: the locks name packages, not where they live. Adding a dependency: `make lock-add`.
PIN := $(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
lock: venv
	$(PIN) --upgrade -o requirements.lock pyproject.toml
	$(PIN) --upgrade --extra test --pip-args "-c requirements.lock" -o requirements-test.lock pyproject.toml

# Pin what pyproject.toml newly asks for, keeping every existing pin.
lock-add: venv
	$(PIN) -o requirements.lock pyproject.toml
	$(PIN) --extra test --pip-args "-c requirements.lock" -o requirements-test.lock pyproject.toml

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
	$(BIN)/mypy src

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The generated files: the editors' JSON Schema and the policy reference (tests fail when stale).
docs: venv
	$(BIN)/python -m waypost schema > schema/waypost.schema.json
	$(BIN)/python -m waypost docs > docs/reference.md

clean:
	rm -rf .demo test-artifacts .pytest_cache .ruff_cache
