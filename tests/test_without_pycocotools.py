"""Without pycocotools (the GPU image has none until wheels are carried), every module imports and
the GPU check's paths run: the op against the reference, FLOPs and FPS, training steps. Only
reading a COCO file or evaluating needs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys

sys.modules["pycocotools"] = None  # every `import pycocotools...` now raises ImportError

import importlib
import importlib.util
import json
import pkgutil

import torch

import ddetr_cli

broken = {}
for module in pkgutil.walk_packages(ddetr_cli.__path__, "ddetr_cli."):
    try:
        importlib.import_module(module.name)
    except Exception as exc:
        broken[module.name] = f"{type(exc).__name__}: {exc}"

spec = importlib.util.spec_from_file_location("gpu_check", "benchmarks/gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check
spec.loader.exec_module(gpu_check)
accuracy = gpu_check.child_accuracy(dry_run=True)  # the op, fp32 and bf16, forward and backward
train = gpu_check.child_train(dry_run=True)  # 3 bf16 training steps (tiny)

from ddetr_cli.bench.model import measure_speed
from ddetr_cli.recipe import load_recipe
from ddetr_cli.bench.flops import count_flops
from ddetr_cli.model import build_model

tiny = ["model.backbone=convnet", "model.enc_layers=1", "model.dec_layers=1",
        "model.num_queries=5", "model.attention_backend=reference"]
model = build_model(load_recipe(None, tiny)).eval()
flops = count_flops(model, [(64, 96)])
speed = measure_speed(model, torch.rand(3, 64, 96), torch.device("cpu"), "bf16", 1, 1, 1)

try:
    from ddetr_cli.data.coco import coco_object

    coco_object({"images": [], "annotations": [], "categories": []}, "x")
    evaluation = "ran"
except ImportError as exc:
    evaluation = f"ImportError: {exc}"

print(json.dumps({
    "broken": broken,
    "accuracy_rows": len(accuracy["rows"]),
    "losses": train["losses"],
    "gflops": flops.gflops,
    "fps": speed.fps,
    "evaluation": evaluation,
    "pycocotools": repr(sys.modules["pycocotools"]),
}))
"""


@pytest.mark.slow
def test_the_gpu_checks_paths_run_without_pycocotools() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["broken"] == {}
    assert result["accuracy_rows"] == 2  # decoder, fp32 and bf16
    assert len(result["losses"]) == 3
    assert result["gflops"] > 0 and result["fps"] > 0
    # The blocker held to the end, and what does need pycocotools says so.
    assert result["pycocotools"] == "None"
    assert result["evaluation"].startswith("ImportError") and "pycocotools" in result["evaluation"]
