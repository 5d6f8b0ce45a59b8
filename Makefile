# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
N ?= auto

.PHONY: demo test lint world bench schema clean-reports

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

## make demo: run the claim suite on the bundled demo world; writes reports/
demo: $(STAMP)
	$(BIN)/python -m pytest hypotheses -n $(N) -q; test $$? -le 1
	$(BIN)/python -m hypocheck.gate reports/summary.json

## make test: lint, type-check and run the project's own tests
test: $(STAMP) lint
	$(BIN)/python -m pytest tests -n $(N) -q

lint: $(STAMP)
	$(BIN)/ruff check hypocheck probes fixtures tests conftest.py
	$(BIN)/mypy hypocheck probes fixtures conftest.py

## make world: regenerate the demo world and retrain its models (deterministic)
world: $(STAMP)
	$(BIN)/python -m fixtures.demo.build

schema: $(STAMP)
	$(BIN)/hypocheck-schema > hypothesis.schema.json
