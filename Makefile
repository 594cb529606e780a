# genart: every target here works on a fresh machine. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
GENART := $(VENV)/bin/genart
DATA   ?= data/sample
IMAGES ?= 200

# Ray's CLI clients default to no token auth while a head started after a local ray.init() turns it on;
# one setting for the server and every client avoids InvalidAuthToken (see docs/troubleshooting).
export RAY_AUTH_MODE ?= disabled
export PYTHONUNBUFFERED := 1
ifdef CI
export RAY_DATA_DISABLE_PROGRESS_BARS := 1
endif

.PHONY: help install lint format test test-fast demo bench-data clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install genart with its dev tools (about 2 minutes cold)

lint: $(VENV)/.installed ## ruff format check and lint
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(VENV)/.installed ## apply ruff formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(VENV)/.installed lint ## lint, then the whole suite with coverage (fails under 80%)
	$(VENV)/bin/pytest --cov=genart --cov-report=term --cov-fail-under=80 -p no:cacheprovider

test-fast: $(VENV)/.installed ## the unit tests only: no Ray, no database, no browser
	$(VENV)/bin/pytest -q -m "not ray and not db and not slow and not browser" -p no:cacheprovider

demo: $(VENV)/.installed ## the main job on embedded defaults: sample data -> index -> split -> report
	$(GENART) data synth --out $(DATA) --images-per-class $(IMAGES) --formats match
	$(GENART) data index $(DATA) --out $(DATA)/manifest.parquet
	$(GENART) data split $(DATA)/manifest.parquet --out $(DATA)/manifest.split.parquet
	$(GENART) data report $(DATA)/manifest.split.parquet --out reports/data

bench-data: $(VENV)/.installed ## Ray Data pipeline vs a PyTorch DataLoader on the same files and transform
	$(PY) -m genart.bench.data --out reports/bench

clean: ## remove generated data, reports, runs and caches (keeps .venv)
	rm -rf data reports runs artifacts mlruns mlflow.db genart.db .coverage .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
