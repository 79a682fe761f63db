"""train.compile (torch.compile of the training step) and the allocator setting training takes:
what they change (time) and what they must not (the values, the checkpoints' keys)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_MODEL

from ddetr_cli.bench.train import TrainBenchOptions, run_train_bench
from ddetr_cli.data import build_datasets, collate
from ddetr_cli.model import build_model
from ddetr_cli.recipe import load_recipe
from ddetr_cli.train.engine import train
from ddetr_cli.train.parts import compile_for_training

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    *TINY_MODEL, "data.shapes.train_images=4", "data.shapes.val_images=2", "train.batch_size=2",
    "train.epochs=1", "train.log_every=1",
]  # fmt: skip


def _recipe(*extra: str) -> dict:
    return load_recipe(ROOT / "recipes" / "shapes.yaml", [*TINY, *extra])


# 40 tensors of 32 MiB, each written through and freed: glibc maps every one afresh (a page
# fault per page written) unless it keeps freed memory.
_ALLOCATE = """
import resource, torch
from ddetr_cli.runtime import keep_freed_memory
kept = keep_freed_memory()
torch.empty(8 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    torch.empty(8 << 20).fill_(1.0)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    faults = {}
    for setting in ("0", "1"):
        env = {**os.environ, "DDETR_KEEP_FREED_MEMORY": setting}
        done = subprocess.run(
            [sys.executable, "-c", _ALLOCATE], env=env, capture_output=True, text=True, check=True
        )
        kept, count = done.stdout.split()
        assert kept == ("True" if setting == "1" else "False")
        faults[setting] = int(count)
    if faults["0"] < 40 * 200:  # 8,192 pages each here; a kernel mapping huge pages faults less
        pytest.skip(f"glibc's defaults fault {faults['0']} times: too few to compare")
    assert faults["1"] < faults["0"] / 4  # measured: 0 to 33,000 against 328,000


def test_off_by_default_and_the_model_itself():
    recipe = _recipe()
    assert recipe["train"]["compile"] is False
    model = build_model(recipe)
    assert compile_for_training(model, recipe["train"]) is model


def test_the_compiled_step_computes_the_eager_one():
    """The compiled model's outputs and gradients equal the eager model's to float rounding
    (Inductor fuses ops and sums in another order), with the same parameters."""
    recipe = _recipe("train.compile=true")
    torch.manual_seed(0)
    model = build_model(recipe).train()
    compiled = compile_for_training(model, recipe["train"])
    assert compiled is not model
    assert dict(compiled.named_parameters()).keys() != set()
    images, _ = collate([build_datasets(recipe).train[i] for i in range(2)])
    results = []
    for module in (model, compiled):
        torch.manual_seed(1)
        out = module(images)
        loss = out["pred_logits"].sigmoid().sum() + out["pred_boxes"].sum()
        model.zero_grad(set_to_none=True)
        loss.backward()
        # The compiled backward gives unused parameters zeros where eager gives None.
        grads = [
            torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()
        ]
        results.append((out["pred_logits"].detach(), out["pred_boxes"].detach(), grads))
    (logits, boxes, grads), (c_logits, c_boxes, c_grads) = results
    torch.testing.assert_close(c_logits, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(c_boxes, boxes, rtol=1e-4, atol=1e-4)
    assert len(c_grads) == len(grads) > 0
    for c_grad, grad in zip(c_grads, grads, strict=True):
        torch.testing.assert_close(c_grad, grad, rtol=1e-3, atol=1e-4)


def test_a_compiled_run_trains_evaluates_and_saves_the_bare_model(tmp_path):
    result = train(_recipe("train.compile=true", f"train.output_dir={tmp_path}"), progress=False)
    assert result is not None and result.steps == 2 and result.last_eval
    ckpt = torch.load(tmp_path / "checkpoint_last.pth", weights_only=True)
    assert ckpt["recipe"]["train"]["compile"] is True
    assert not [key for key in ckpt["model"] if "_orig_mod" in key]
    assert ckpt["model"].keys() == build_model(_recipe()).state_dict().keys()


def test_bench_train_times_a_compiled_step_as_a_whole():
    report = run_train_bench(
        _recipe("train.compile=true"), TrainBenchOptions(steps=1, warmup=1, eval_pictures=0)
    )
    parts = {row["part"] for row in report["parts"]}
    assert report["protocol"]["compile"] is True
    assert {"step", "forward", "backward", "optimizer"} <= parts
    assert not parts & {"- backbone", "- encoder", "- decoder", "- rest"}
    assert report["first_step_ms"] > 0  # it holds the compile where nothing was cached
