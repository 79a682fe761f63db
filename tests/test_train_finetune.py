"""Fine-tuning features: gradient accumulation (train.accumulate), the EMA of the weights
(train.ema), early stopping (train.patience) and TensorBoard event files (train.tensorboard)."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_MODEL

from ddetr_cli.data import ShapesDataset, collate
from ddetr_cli.model import build_model
from ddetr_cli.recipe import load_recipe
from ddetr_cli.train.checkpointing import find_resume
from ddetr_cli.train.criterion import build_criterion
from ddetr_cli.train.ema import ModelEMA
from ddetr_cli.train.engine import train, train_step
from ddetr_cli.train.report import TENSORBOARD_HINT, Reporter
from ddetr_cli.train.state import TrainState
from ddetr_cli.weights import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    *TINY_MODEL, "data.shapes.train_images=4", "data.shapes.val_images=1", "train.batch_size=1",
    "train.log_every=1", "model.attention_backend=reference",
]  # fmt: skip


def _recipe(out: Path | None = None, *extra: str) -> dict:
    more = [f"train.output_dir={out}"] if out is not None else []
    return load_recipe(ROOT / "recipes" / "shapes.yaml", [*TINY, *more, *extra])


def test_accumulated_batches_give_the_update_of_one_large_batch():
    # No batch statistics, no dropout, float64: the split of the batch is the only difference.
    recipe = _recipe(None, "model.backbone_norm=frozen", "model.dropout=0.0")
    torch.manual_seed(0)
    big = build_model(recipe).double()
    small = copy.deepcopy(big)
    criterion = build_criterion(recipe)
    data = ShapesDataset(0, 4, train=True, augment="none")
    items = [data[(0, i)] for i in range(4)]
    # Different box counts per picture, so per-batch normalisation would not match.
    assert len({len(t["labels"]) for _, t in items}) > 1
    cfg = recipe["train"]
    one = TrainState.create(big, cfg, torch.device("cpu"))
    two = TrainState.create(small, cfg, torch.device("cpu"))
    cpu = torch.device("cpu")
    losses_one = train_step(big, criterion, one, [collate(items)], cfg, cpu)
    losses_two = train_step(small, criterion, two, [collate(items[:1]), collate(items[1:])], cfg,
                            cpu)  # fmt: skip
    assert losses_two["loss"] == pytest.approx(losses_one["loss"], rel=1e-12)
    assert losses_two["grad_norm"] == pytest.approx(losses_one["grad_norm"], rel=1e-10)
    for (name, a), b in zip(big.named_parameters(), small.parameters(), strict=True):
        if name.startswith("input_proj.") and name.endswith(".0.bias"):
            continue  # cancelled by a one-channel-per-group GroupNorm: its gradient is noise
        assert torch.allclose(a, b, rtol=0, atol=1e-12), name
    assert not torch.equal(big.class_embed[0].weight, build_model(recipe).class_embed[0].weight)


def test_ema_warms_up_and_follows_the_weights():
    model = torch.nn.Linear(2, 2)
    ema = ModelEMA(model, 0.9998)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    # The first update has decay ~1e-4: the average is almost the new weights.
    assert torch.allclose(ema.module.weight, model.weight, atol=1e-3)
    assert ema.current_decay() < 0.001
    ema.updates = 100_000
    assert ema.current_decay() == pytest.approx(0.9998)


def test_ema_follows_in_place_updates_and_copies_counters():
    # Weights and BatchNorm statistics change in place between updates (optimiser, forward
    # passes); every update averages their current values and copies the integer counter.
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = ModelEMA(model, 0.5, warmup_steps=0)
    expected = {k: v.clone() for k, v in ema.module.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(8, 3)).square().sum().backward()
        optimizer.step()
        ema.update(model)
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                expected[key] = 0.5 * expected[key] + 0.5 * value
            else:
                expected[key] = value.clone()
    for key, value in ema.module.state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-6), key
    assert int(ema.module[1].num_batches_tracked) == 3
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema.update(other)  # another model object is paired anew
    assert torch.allclose(ema.module[0].weight, 0.5 * expected["0.weight"] + 0.5 * other[0].weight)


def test_ema_warmup_comes_from_the_recipe():
    model = torch.nn.Linear(2, 2)
    assert ModelEMA(model, 0.99, warmup_steps=0).current_decay() == 0.99
    short = ModelEMA(model, 0.99, warmup_steps=100)
    short.updates = 100
    assert short.current_decay() == pytest.approx(0.99 * (1 - math.exp(-1)))
    recipe = load_recipe(
        ROOT / "recipes" / "shapes.yaml", ["train.ema=0.99", "train.ema_warmup=50"]
    )
    state = TrainState.create(build_model(recipe), recipe["train"], torch.device("cpu"))
    assert state.ema is not None and state.ema.warmup_steps == 50
    with pytest.raises(Exception, match="ema_warmup"):
        load_recipe(None, ["train.ema_warmup=-1"])


@pytest.mark.slow
def test_accumulate_and_ema_resume_exactly(tmp_path):
    # 4 pictures, batch 1, 2 batches per step: 2 optimiser steps per epoch, 4 in all.
    extra = ["train.accumulate=2", "train.ema=0.9", "train.epochs=2"]
    straight = train(_recipe(tmp_path / "a", *extra), progress=False)
    assert straight.steps == 4 and straight.epochs_done == 2
    train(_recipe(tmp_path / "b", *extra, "train.max_steps=1"), progress=False)
    assert read_checkpoint(tmp_path / "b" / "checkpoint_last.pth")["batch"] == 2
    resumed = train(_recipe(tmp_path / "b", *extra), resume=find_resume(tmp_path / "b"),
                    progress=False)  # fmt: skip
    assert resumed.steps == 4
    a = read_checkpoint(tmp_path / "a" / "checkpoint_last.pth")
    b = read_checkpoint(tmp_path / "b" / "checkpoint_last.pth")
    assert a["ema"]["updates"] == b["ema"]["updates"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"]["model"][key], b["ema"]["model"][key]), key
    best = read_checkpoint(tmp_path / "a" / "checkpoint_best.pth")
    assert best["ema_weights"] is True and "optimizer" not in best


def test_patience_stops_the_run_and_tensorboard_writes_events(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    # The tiny model's val AP stays 0: after the first evaluation it never improves.
    out = tmp_path / "run"
    extra = ["data.shapes.train_images=1", "train.epochs=5", "train.patience=2"]
    result = train(_recipe(out, *extra, "train.tensorboard=true"), progress=False)
    assert result.epochs_done == 3
    assert "has not improved for 2 evaluations" in result.stopped_early
    assert list(out.glob("events.out.tfevents.*"))
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 3
    assert any(line.startswith("stopping: val AP has not improved") for line in lines)
    assert read_checkpoint(out / "checkpoint_last.pth")["epoch"] == 3


def test_tensorboard_missing_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    reporter = Reporter(tmp_path, enabled=True, progress=False, tensorboard=True)
    assert reporter.writer is None
    reporter.close()
    out = capsys.readouterr().out
    assert TENSORBOARD_HINT in out and "pip install 'ddetr-cli[tensorboard]'" in out
