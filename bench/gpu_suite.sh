#!/usr/bin/env bash
# The GPU suite on a bare CUDA machine that has torch, transformers, accelerate and peft but not
# diffusers (this workplace's lent GPUs): install the wheels carried in .whl/, then run the suite.
#
# Once, on a machine with PyPI (the wheels travel with the tree; .whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
# On the GPU machine (the device tool: carry .whl, give it a timeout that leaves time for a rerun):
#   bash bench/gpu_suite.sh [suite flags]          # e.g. --case sdedit --case ito --repeat 3
# The suite prints a table last and appends its rows to bench/RESULTS.md; $OUT, when set, gets a
# copy of RESULTS.md and the log so they come back with the call.
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "could not install the carried wheels" >&2; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import diffusers" 2>/dev/null || { echo "diffusers is missing: carry its wheel in .whl/ (see this file's header)" >&2; exit 2; }
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 DES_CACHE_DIR=${DES_CACHE_DIR:-/tmp/des-cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
log=${OUT:-/tmp}/suite.log
python3 -m bench.suite --device cuda "$@" 2>&1 | tee "$log"
code=${PIPESTATUS[0]}
[ -n "${OUT:-}" ] && cp bench/RESULTS.md "$OUT/RESULTS.md"
exit "$code"
