#!/usr/bin/env bash
# The one command for a GPU machine (benchmarks/GPU_CHECK.md says how a session runs it):
#
#   benchmarks/gpu_check.sh                 # report into $OUT when set, else benchmarks/
#   benchmarks/gpu_check.sh --out DIR       # gpu_<device>.json and .md, gpu_check.log in DIR
#   benchmarks/gpu_check.sh --dry-run --out DIR   # every step in a tiny CPU form (CI runs it)
#
# Steps, caps and the report: benchmarks/gpu_check.py. The interpreter is python3 (the GPU
# image's, which holds torch), or $PYTHON; unbuffered, so each step's line shows as it finishes.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -u benchmarks/gpu_check.py "$@"
