# The README's two commands are `make demo` and `make test`; both install first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 180

.PHONY: install system-deps demo test test-e2e lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,pretrained]'

demo: install
	$(BIN)/ebr retrain

# Debian's Chromium, for the test that renders the Prefect UI (no browser download).
system-deps:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Two tiers: unit and integration tests (at most 10 minutes on 2 cores), then end-to-end runs.
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "not e2e"

test-e2e: install system-deps
	$(BIN)/python -m pytest -q -m e2e -o timeout=1800

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# What runs leave in this folder: the default home (ebr_home/), the e2e tier's screenshots (test-artifacts/),
# the caches of pytest, ruff, hypothesis and Python (__pycache__/), and Hydra's and Lightning's default output
# folders should a run fall back on them (outputs/, multirun/, lightning_logs/). The venv stays.
clean:
	rm -rf ebr_home test-artifacts .pytest_cache .ruff_cache .hypothesis outputs multirun lightning_logs
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
