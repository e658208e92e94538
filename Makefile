# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export VOICEFW_HOME ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
DAYS ?= 3
CALLS_PER_DAY ?= 20000
SEED ?= 7

.PHONY: run test setup simulate materialize ui serve bench clean

$(BIN)/voicefw: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/voicefw

setup: $(BIN)/voicefw

## run: set up, simulate drops, materialize the whole graph, start the Dagster UI (:3000) and the scoring service (:8000)
run: setup
	@if [ -z "$$(ls -A $(VOICEFW_HOME)/landing 2>/dev/null)" ]; then \
		$(BIN)/voicefw simulate --days $(DAYS) --calls-per-day $(CALLS_PER_DAY) --seed $(SEED); \
	else echo "$(VOICEFW_HOME)/landing already has drops: not simulating again (make clean starts over)"; fi
	$(BIN)/voicefw materialize || echo "*** some runs failed or a check did not pass: the UI below shows which ***"
	$(BIN)/voicefw up

## test: set up and run the test suite (installs and starts a throwaway PostgreSQL for the Postgres tests,
## and installs kamailio + sipp for the real-switch tests)
test: setup
	bash .ci/postgres.sh install
	bash .ci/switches.sh install
	$(BIN)/python -m pytest

simulate: setup
	$(BIN)/voicefw simulate --days $(DAYS) --calls-per-day $(CALLS_PER_DAY) --seed $(SEED)

materialize: setup
	$(BIN)/voicefw materialize

ui: setup
	$(BIN)/dagster dev -w workspace.yaml -p 3000

clean:
	rm -rf data .dagster_home
