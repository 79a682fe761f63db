"""The training engine: run folder, exact resume, fine-tuning, parameter groups, and a
2-process torchrun (gloo) run equal to one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ports import free_port
from tiny import TINY_MODEL

from ddetr_cli.data import build_datasets
from ddetr_cli.model import build_model
from ddetr_cli.recipe import load_recipe
from ddetr_cli.runtime import Dist
from ddetr_cli.train.checkpointing import find_resume, load_initial_weights
from ddetr_cli.train.engine import train
from ddetr_cli.train.optim import build_optimizer
from ddetr_cli.train.parts import build_loaders, worker_context
from ddetr_cli.weights import read_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
# A tiny two-stage model on 6 built-in shapes pictures: 3 steps per epoch at batch 2.
TINY = [
    *TINY_MODEL, "data.shapes.train_images=6", "data.shapes.val_images=2", "train.batch_size=2",
    "train.epochs=2", "train.log_every=1", "train.lr_drop=1", "model.attention_backend=reference",
]  # fmt: skip


def _recipe(out: Path, *extra: str) -> dict:
    return load_recipe(ROOT / "recipes" / "shapes.yaml", [*TINY, f"train.output_dir={out}", *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


@pytest.mark.slow
def test_run_folder_and_exact_resume(tmp_path):
    straight = train(_recipe(tmp_path / "a"), progress=False)
    assert straight.epochs_done == 2 and straight.steps == 6
    run = tmp_path / "a"
    assert {p.name for p in run.iterdir()} >= {
        "recipe.yaml", "metrics.jsonl", "checkpoint_last.pth", "checkpoint_best.pth"
    }  # fmt: skip
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in lines].count("epoch") == 2
    assert {"loss_ce", "loss_bbox_0", "loss_giou_enc", "lr", "time"} <= set(lines[0])
    assert "AP50" in [r for r in lines if r["type"] == "epoch"][-1]

    # Stop mid-epoch after 4 steps (as Ctrl-C would), then resume to the end.
    train(_recipe(tmp_path / "b", "train.max_steps=4"), progress=False)
    assert read_checkpoint(tmp_path / "b" / "checkpoint_last.pth")["batch"] == 1
    resumed = train(_recipe(tmp_path / "b"), resume=find_resume(tmp_path / "b"), progress=False)
    assert resumed.steps == 6
    a, b = _weights(run / "checkpoint_last.pth"), _weights(tmp_path / "b" / "checkpoint_last.pth")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fine_tuning_reinitialises_class_heads(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "shapes.yaml", TINY)
    path = save_checkpoint(tmp_path / "w.pth", build_model(recipe), recipe)
    five = load_recipe(ROOT / "recipes" / "shapes.yaml", [*TINY, "model.num_classes=5",
                                                          "model.class_names=null"])  # fmt: skip
    model = build_model(five)
    note = load_initial_weights(model, path)
    assert "re-initialised the class heads (3 -> 5 classes)" in note
    assert model.class_embed[0].weight.shape[0] == 5


def test_official_parameter_groups():
    recipe = load_recipe(None, ["model.with_box_refine=true"])
    model = build_model(recipe)
    groups = {g["name"]: g for g in build_optimizer(model, recipe["train"]).param_groups}
    assert groups["rest"]["lr"] == 2e-4 and groups["backbone"]["lr"] == 2e-5
    assert groups["linear_proj"]["lr"] == pytest.approx(2e-5)
    assert all(g["weight_decay"] == 1e-4 for g in groups.values())
    n_linear = sum(p.numel() for p in groups["linear_proj"]["params"])
    names = [n for n, p in model.named_parameters() if "sampling_offsets" in n
             or "reference_points" in n]  # fmt: skip
    assert n_linear == sum(dict(model.named_parameters())[n].numel() for n in names)


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    # No batch statistics and no dropout, so the only difference is how the batch is split.
    # One step: after it, Adam's noise amplification (below) would compound.
    common = ["model.backbone_norm=frozen", "model.dropout=0.0", "train.max_steps=1",
              "train.epochs=1", "data.shapes.val_images=2"]  # fmt: skip
    single = train(_recipe(tmp_path / "one", *common, "train.batch_size=2"), progress=False)
    assert single.steps == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port()), "-m", "ddetr_cli", "train",
           str(ROOT / "recipes/shapes.yaml"),
           *TINY, *common, "train.batch_size=1", f"train.output_dir={tmp_path / 'two'}",
           "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # The global gradient is the same: its norm (logged before clipping) matches.
    norms = [_grad_norms(tmp_path / run) for run in ("one", "two")]
    assert norms[0][0] == pytest.approx(norms[1][0], rel=1e-5)
    one = _weights(tmp_path / "one" / "checkpoint_last.pth")
    two = _weights(tmp_path / "two" / "checkpoint_last.pth")
    lr = 5e-4
    for key in one:
        if key.startswith("input_proj.") and key.endswith(".0.bias"):
            continue  # cancelled by a one-channel-per-group GroupNorm: its gradient is pure noise
        diff = (one[key].float() - two[key].float()).abs()
        # Adam moves a weight by about lr * sign(gradient) whatever the gradient's size, so the
        # rare elements whose gradient is ~0 (pure rounding noise) may differ by up to
        # 2 * lr; every other element agrees to float precision.
        assert diff.max() <= 2 * lr + 1e-6, key
        assert (diff > 1e-6).float().mean() < 0.01, key


def _grad_norms(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["grad_norm"] for r in lines if r["type"] == "step"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_steps(tmp_path, amp):
    out = tmp_path / amp
    train(_recipe(out, f"train.amp={amp}", "train.max_steps=1", "train.epochs=1"), progress=False)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)


def test_the_run_time_counts_every_part_of_a_resumed_run(tmp_path):
    """The summary's minutes and metrics.jsonl's times are the whole run's, not the last part's."""
    out = tmp_path / "run"
    train(_recipe(out, "train.max_steps=1", "train.epochs=1"), progress=False)
    path = out / "checkpoint_last.pth"
    ckpt = read_checkpoint(path)
    assert 0 < ckpt["seconds"] < 600
    ckpt["seconds"] = 600.0  # as if the first part had taken ten minutes
    torch.save(ckpt, path)
    resumed = train(_recipe(out, "train.epochs=1"), resume=find_resume(out), progress=False)
    assert resumed.steps == 3 and 600 < resumed.seconds < 1200
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 3]  # steps 2, 3 and the epoch: resumed
    assert lines[0]["time"] < 600 < lines[1]["time"] < lines[2]["time"] <= lines[3]["time"]
    assert read_checkpoint(path)["seconds"] >= lines[3]["time"]


def test_checkpoints_say_what_their_numbers_depend_on(tmp_path):
    """The same code and seed give other numbers with another CPU instruction set, one thread
    instead of several, or another torch: a run's checkpoints record them."""
    train(_recipe(tmp_path / "run", "train.max_steps=1", "train.epochs=1"), progress=False)
    environment = read_checkpoint(tmp_path / "run" / "checkpoint_last.pth")["environment"]
    assert environment == {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "attention_backend": "reference",
    }


def test_loader_workers_start_from_a_fork_server_and_val_workers_stay():
    """A worker forked from the training process copies the locks its threads hold (a val
    worker hung so at an evaluation); workers come from a fork server instead, the val ones
    once per run, and give the same batches."""
    recipe = load_recipe(ROOT / "recipes" / "shapes.yaml", [*TINY, "data.num_workers=1"])
    splits = build_datasets(recipe)
    train_loader, sampler, val_loader = build_loaders(splits, recipe["train"], Dist(), 1)
    assert worker_context(0) is None
    for loader in (train_loader, val_loader):
        assert loader.multiprocessing_context.get_start_method() == "forkserver"
        assert loader.persistent_workers
    sampler.set_epoch(0)
    in_workers = [next(iter(train_loader)), next(iter(val_loader))]
    sampler.set_epoch(0)
    plain = build_loaders(splits, recipe["train"], Dist(), 0)
    in_process = [next(iter(plain[0])), next(iter(plain[2]))]
    for (images, targets), (images0, targets0) in zip(in_workers, in_process, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(images, images0, strict=True))
        assert [t["boxes"].tolist() for t in targets] == [t["boxes"].tolist() for t in targets0]
