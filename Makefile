# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
N ?= auto
NPM ?= npm
NODE_STAMP := node_modules/.installed
ALLURE_RESULTS := reports/allure-results
ALLURE_HISTORY := reports/allure-history.jsonl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

.PHONY: demo test report browser lint world baselines bench schema clean-reports scale-world bench-suite gpu-bundle

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# The Allure 3 command-line tool (npm, pinned in package.json / package-lock.json) renders reports/html.
$(NODE_STAMP): package.json package-lock.json
	@command -v $(NPM) >/dev/null || { echo "npm (Node.js >= 20) is needed for the HTML report" >&2; exit 1; }
	$(NPM) ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

## make browser: a headless Chromium for the report test (Debian's package; installed only when absent)
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium; }

## make demo: run the claim suite on the bundled demo world; writes reports/ (summary, Allure results, html/)
demo: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest hypotheses -n $(N) -q --alluredir $(ALLURE_RESULTS) --clean-alluredir; test $$? -le 1
	$(MAKE) --no-print-directory report
	$(BIN)/hypocheck gate reports/summary.json

## make report: (re)render reports/html/index.html from reports/allure-results, extending the history
report: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m hypocheck.allure_report generate $(ALLURE_RESULTS) -o reports/html --history $(ALLURE_HISTORY)

## make test: lint, type-check and run the project's own tests (the report test opens reports in Chromium)
test: $(STAMP) $(NODE_STAMP) browser lint
	HYPOCHECK_BROWSER_REQUIRED=1 $(BIN)/python -m pytest tests -n $(N) -q

# mypy reads the code as the installed distribution lays it out: one `hypocheck` namespace whose `probes` and
# `fixtures` subpackages are this repository's top-level folders (a tree of links, rebuilt each time).
TYPECHECK_TREE := .typecheck

lint: $(STAMP)
	$(BIN)/ruff check hypocheck probes fixtures tests tools conftest.py
	@rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)/hypocheck
	@for f in hypocheck/*.py; do ln -s "$$PWD/$$f" $(TYPECHECK_TREE)/hypocheck/; done
	@ln -s "$$PWD/probes" $(TYPECHECK_TREE)/hypocheck/probes && ln -s "$$PWD/fixtures" $(TYPECHECK_TREE)/hypocheck/fixtures
	$(BIN)/mypy $(TYPECHECK_TREE)/hypocheck tools conftest.py

## make world: regenerate the demo world and retrain its models (deterministic)
world: $(STAMP)
	$(BIN)/python -m tools.demo.build

## make baselines: retrain the demo world's arc-state baselines (perturb_mean, context_mean, embed_sum) with `state tx train` into tools/demo/runs (about 3 minutes)
baselines: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m tools.demo.baselines

## make bench: probe timings on the demo world, the Jacobian engine vs the original method at real sizes, sketched vs exact Jacobian Grams
bench: $(STAMP)
	$(BIN)/python -m tools.bench.probes_bench
	$(BIN)/python -m tools.bench.jacobian_bench --cells 64 --kds 3 --orig-genes 200 --jacfwd-kds 1 --threads 1
	$(BIN)/python -m tools.bench.sketch_bench --threads 1

## make scale-world: generate a world at ST-HVG-Replogle sizes in worlds/scale (2,000 genes, 2,024 perturbations, 4 lines, 8-layer hidden-328 models; 19 min, 403 MB on a busy 2-core CPU)
scale-world: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m tools.demo.scale --out worlds/scale

## make bench-suite: the whole paper suite end to end on worlds/scale (all 2,023 knockdowns, controls, artifacts shared), pytest-xdist on both cores; time per claim, wall, peak RSS, load, FLOPs floor -> reports/bench/suite_e2e.json (BENCH_SIZE=small: a small world, about a minute)
bench-suite: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m tools.bench.suite_e2e --size $(or $(BENCH_SIZE),real) $(BENCH_ARGS)

## make gpu-bundle: the wheels a bare GPU machine lacks (Python 3.12, manylinux) and this project's wheel, in .gpu-bundle/ (within the 64 MiB that travels); then run `bash tools/bench/gpu_run.sh` there with .gpu-bundle carried
gpu-bundle: $(STAMP)
	$(BIN)/python -m tools.bench.gpu_bundle --out .gpu-bundle

## make schema: regenerate hypothesis.schema.json (editor completion) and docs/probes.md (the probe reference)
schema: $(STAMP)
	$(BIN)/hypocheck-schema > hypothesis.schema.json
	@mkdir -p docs
	$(BIN)/hypocheck probes --markdown > docs/probes.md
