#!/usr/bin/env bash
# The one command to run on a machine with a GPU (under 8 minutes on an H100/H200):
#
#   benchmarks/gpu_check.sh               # -> benchmarks/gpu_<device>.json and .md, PASS/FAIL lines
#   benchmarks/gpu_check.sh --dry-run     # CPU-only check of the script itself (report in a temp dir)
#   benchmarks/gpu_check.sh --budget-s 600 --only versions,build,pytest
#
# Builds the CUDA kernel for the present GPU into a fresh temporary cache (DDETR_CACHE_DIR), runs
# pytest -m gpu, the op and end-to-end benchmarks and a few training steps; see gpu_check.py.
# Exit status 1 when a section failed (the report still has every other section); a section cut
# off by the time budget (--budget-s, default 450 s) is marked "timeout" and does not fail the run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -f /work/venv/bin/activate && -z "${VIRTUAL_ENV:-}" ]]; then
  # shellcheck disable=SC1091
  source /work/venv/bin/activate
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python benchmarks/gpu_check.py "$@"
