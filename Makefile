# The two commands of the README.  Both install what they need (idempotently) and then run.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
export OMP_WAIT_POLICY ?= PASSIVE
# The venv's console scripts (bcr, mkdocs for mike, snakemake) resolve without activating it.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test setup lint lock serve clean

setup:
	@bash scripts/setup_env.sh
	@bash scripts/setup_peers.sh

## run: the whole pipeline on the embedded CPU default (config/config.yaml); the site lands in results/site
## (keeps going past a failed job, then builds the site from what exists and exits non-zero)
run: setup
	@CORES=$(CORES) bash scripts/run.sh

## serve: browse the built site on http://127.0.0.1:8000/ (loopback only)
serve:
	$(BIN)/python -m http.server --bind 127.0.0.1 --directory results/site 8000

## test: lint, snakemake --lint, and the test suite (unit, differential, workflow)
test: setup
	@bash scripts/setup_browser.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakemake --lint
	$(BIN)/python -m pytest -n $(CORES) --dist loadfile --durations=15

## lock: regenerate requirements/lock/*.txt after changing a pin (pyproject.toml, requirements/*.in)
lock:
	@bash scripts/lock.sh

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/snakemake --lint

clean:
	rm -rf results logs .snakemake
