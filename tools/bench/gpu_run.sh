#!/usr/bin/env bash
# The real-size GPU run in one command of at most 8 minutes (tools/bench/gpu_run.py says what it measures).
#
# On the GPU machine, from the repository root, with .gpu-bundle carried (`make gpu-bundle` builds it here):
#     bash tools/bench/gpu_run.sh                 # records under $OUT (else reports/bench/gpu)
# Here, without a GPU (tests/test_gpu_run.py):
#     PYTHON=.venv/bin/python bash tools/bench/gpu_run.sh --dry-run
#
# tools.bench.imports records who imports what (the bundle check). The bundle's wheels that this Python lacks are installed, offline, into a temporary folder put first on the
# module path, so the machine's own PyTorch with CUDA is used; without a bundle the installed packages are used.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
BUNDLE="${GPU_BUNDLE:-$ROOT/.gpu-bundle}"
LIMIT_S="${GPU_RUN_LIMIT_S:-480}"   # the whole command, install included
cd "$ROOT"
start=$(date +%s)
if [ -f "$BUNDLE/BUNDLE.json" ]; then
    SITE="$(mktemp -d)/site"
    echo "installing $BUNDLE into $SITE"
    # -P: the checkout's own hypocheck/ folder must not shadow the installed wheel
    "$PY" -P -c "import sys; sys.path.insert(0, '$ROOT'); from tools.bench.gpu_bundle import main; main(sys.argv[1:])" \
        install --bundle "$BUNDLE" --target "$SITE"
    export PYTHONPATH="$SITE:$ROOT" PYTHONSAFEPATH=1 GPU_BUNDLE_INSTALLED="$SITE"
else
    echo "no bundle at $BUNDLE: using the packages of $PY"
fi
left=$(( LIMIT_S - ($(date +%s) - start) ))
budget=$(( left - 30 ))             # stages stop starting 30 s before the limit
export PYTHONUNBUFFERED=1
exec timeout "$left" "$PY" -m tools.bench.imports tools.bench.gpu_run --budget-s "$budget" "$@"
