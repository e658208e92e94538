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
	@# simulated drops are published by rename, complete: no need to wait VOICEFW_SETTLE_S for them
	VOICEFW_SETTLE_S=0 $(BIN)/voicefw materialize || echo "*** some runs failed or a check did not pass: the lines above and the UI say which ***"
	@echo "voicefw lives in $(BIN)/ (source $(BIN)/activate to call it as voicefw); its Dagster instance is DAGSTER_HOME=$(DAGSTER_HOME)"
	$(BIN)/voicefw up

## test: set up, check the Dagster definitions load (dg check defs), run the test suite (installs PostgreSQL
## and Redis for throwaway test servers, and kamailio + sipp for the real-switch tests)
test: setup
	bash .ci/postgres.sh install
	bash .ci/redis.sh install
	bash .ci/switches.sh install
	tmp=$$(mktemp -d) && echo "telemetry: {enabled: false}" > $$tmp/dagster.yaml && DAGSTER_HOME=$$tmp $(BIN)/dg check defs; status=$$?; rm -rf $$tmp; exit $$status
	$(BIN)/python -m pytest

simulate: setup
	$(BIN)/voicefw simulate --days $(DAYS) --calls-per-day $(CALLS_PER_DAY) --seed $(SEED)

materialize: setup
	$(BIN)/voicefw materialize

ui: setup
	$(BIN)/dg dev -w workspace.yaml --port 3000 --log-level warning

clean:
	rm -rf data .dagster_home
