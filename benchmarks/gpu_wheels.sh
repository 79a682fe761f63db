#!/usr/bin/env bash
# The wheels the GPU image lacks, for the GPU check to carry (benchmarks/GPU_CHECK.md), into
# .gpu_wheels/ (ignored by git; named in `carry`, installed there with pip install --target).
#
# The image has Python 3.12 (python3), torch 2.11 (cu130), torchvision 0.26 and IMAGE_HAS below,
# and nothing can be installed there from an index. Of ddetr's dependencies (pyproject.toml) it
# lacks pycocotools alone, which needs only numpy; this script checks that again on every run, so a
# new dependency the image lacks stops it until it is added to WHEELS or found on the image.
#
#   bash benchmarks/gpu_wheels.sh        # needs pip and PyPI here; prints what it saved and its size
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
DEST=.gpu_wheels
WHEELS=("pycocotools==2.0.11")  # the version the development environment tests with
IMAGE_HAS="torch torchvision numpy typer rich scipy pyyaml ninja pillow matplotlib safetensors
onnx onnxruntime onnxscript transformers timm huggingface_hub tensorboard pytest"
MAX_MIB=16  # far under the 64 MiB a call may carry (the source tree travels too)

"$PYTHON" - "$IMAGE_HAS" "${WHEELS[@]}" <<'PY'
import re, sys, tomllib
image = set(sys.argv[1].split())
carried = {re.split(r"[=<>!~ ]", w)[0].lower() for w in sys.argv[2:]}
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
needed = [*project["dependencies"], *project["optional-dependencies"]["test"]]
names = {re.split(r"[\[=<>!~ ;]", d, maxsplit=1)[0].lower().replace("-", "_") for d in needed}
missing = sorted(names - {n.replace("-", "_") for n in image | carried} - {"ruff"})
if missing:
    sys.exit(f"gpu_wheels.sh: neither on the image nor carried: {', '.join(missing)} (add to WHEELS)")
PY

rm -rf "$DEST"
mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"
kib=$(du -sk "$DEST" | cut -f1)
echo "$DEST: $(( (kib + 1023) / 1024 )) MiB (${kib} KiB) for ${#WHEELS[@]} wheel(s)"
if (( kib > MAX_MIB * 1024 )); then
    echo "gpu_wheels.sh: $DEST is over $MAX_MIB MiB" >&2
    exit 1
fi
