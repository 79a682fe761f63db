"""train.lr_schedule: the official step schedule, and cosine / linear decays to 0 over the run
that move after every optimiser step and resume exactly; train.warmup_steps on top of any."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny import TINY_MODEL

from ddetr_cli.errors import Terminated
from ddetr_cli.model import build_model
from ddetr_cli.recipe import load_recipe
from ddetr_cli.train.checkpointing import find_resume
from ddetr_cli.train.engine import Trainer, train
from ddetr_cli.train.optim import decay_factor, total_optimizer_steps, warmup_share
from ddetr_cli.train.state import TrainState
from ddetr_cli.weights import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
# 6 pictures at batch 2: 3 optimiser steps per epoch, 6 in the run; the rates the tests assert.
TINY = [
    *TINY_MODEL, "data.shapes.train_images=6", "data.shapes.val_images=2", "train.batch_size=2",
    "train.epochs=2", "train.log_every=1", "model.attention_backend=reference",
    "train.lr=5.0e-4", "train.lr_backbone=5.0e-4",
]  # fmt: skip


def _recipe(*extra: str) -> dict:
    return load_recipe(ROOT / "recipes" / "shapes.yaml", [*TINY, *extra])


def test_decay_factors():
    assert [decay_factor("linear", 4, s) for s in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    cosine = [decay_factor("cosine", 4, s) for s in range(5)]
    assert cosine[0] == 1.0 and cosine[2] == pytest.approx(0.5) and cosine[4] == 0.0
    assert cosine[1] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_total_steps_count_partial_groups_and_max_steps():
    cfg = {"epochs": 3, "accumulate": 2, "max_steps": 0}
    assert total_optimizer_steps(cfg, 5) == 9  # 2 + 2 + 1 batches per epoch, 3 steps each
    assert total_optimizer_steps({**cfg, "max_steps": 4}, 5) == 4
    assert total_optimizer_steps({**cfg, "max_steps": 40}, 5) == 9


def test_a_bad_schedule_is_refused_by_the_recipe():
    with pytest.raises(Exception, match="lr_schedule"):
        _recipe("train.lr_schedule=exponential")


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_every_step_takes_the_decayed_rate(tmp_path, schedule, capsys):
    train(_recipe(f"train.lr_schedule={schedule}", f"train.output_dir={tmp_path}"), progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # A step's line carries the rate the next step will take.
    lrs = [r["lr"] for r in lines if r["type"] == "step"]
    assert lrs == pytest.approx([5e-4 * decay_factor(schedule, 6, s) for s in range(1, 7)])
    assert lrs[-1] == 0.0
    assert f"{schedule} decay to 0 over 6 steps" in capsys.readouterr().out


def test_the_step_schedule_moves_per_epoch(tmp_path, capsys):
    train(_recipe("train.lr_drop=1", f"train.output_dir={tmp_path}"), progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in lines if r["type"] == "step"] == [5e-4] * 3 + [5e-5] * 3
    assert "x0.1 every 1 epochs" in capsys.readouterr().out


@pytest.mark.parametrize("warmup", [0, 5])
def test_a_cosine_run_stopped_mid_epoch_resumes_exactly(tmp_path, monkeypatch, warmup):
    schedule = ["train.lr_schedule=cosine", f"train.warmup_steps={warmup}"]
    straight = train(_recipe(*schedule, f"train.output_dir={tmp_path / 'a'}"), progress=False)
    assert straight.steps == 6
    # Stopped after 4 steps as SIGTERM would stop it: the recipe, and so the schedule, unchanged.
    monkeypatch.setattr(Trainer, "_stop_requested", lambda self: self.state.step == 4)
    stopped = _recipe(*schedule, f"train.output_dir={tmp_path / 'b'}")
    with pytest.raises(Terminated):
        train(stopped, progress=False)
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "b" / "checkpoint_last.pth")["step"] == 4
    resumed = train(stopped, resume=find_resume(tmp_path / "b"), progress=False)
    assert resumed.steps == 6
    a = read_checkpoint(tmp_path / "a" / "checkpoint_last.pth")
    b = read_checkpoint(tmp_path / "b" / "checkpoint_last.pth")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_loading_a_state_sets_the_rates_of_its_step():
    recipe = _recipe("train.lr_schedule=cosine")
    model = build_model(recipe)
    cfg = recipe["train"]
    state = TrainState.create(model, cfg, torch.device("cpu"), total_steps=10)
    for _ in range(3):
        state.optimizer.step()
        state.scheduler.step()
    state.step = 3
    again = TrainState.create(model, cfg, torch.device("cpu"), total_steps=10)
    again.load({**state.state_dict(), "rng": []}, model, cfg, rank=0)
    expected = [g["lr"] for g in state.optimizer.param_groups]
    assert [g["lr"] for g in again.optimizer.param_groups] == expected
    assert expected[0] == pytest.approx(5e-4 * decay_factor("cosine", 10, 3))
    for each in (state, again):
        each.optimizer.step()
        each.scheduler.step()
    assert [g["lr"] for g in again.optimizer.param_groups] == [
        g["lr"] for g in state.optimizer.param_groups
    ]


def test_warmup_shares():
    assert [warmup_share(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_share(0, 0) == 1.0


def test_a_warmed_up_step_is_a_step_at_the_smaller_rate(tmp_path):
    """The first of 4 warm-up steps at lr equals a plain step at lr / 4, for every group (the
    backbone's and the sampling offsets' too) and the weight decay; the stored rates stay the
    scheduled ones."""
    warmed = _recipe("train.warmup_steps=4", "train.lr=4e-4", "train.lr_backbone=4e-5",
                     "train.max_steps=1", f"train.output_dir={tmp_path / 'a'}")  # fmt: skip
    plain = _recipe("train.lr=1e-4", "train.lr_backbone=1e-5", "train.max_steps=1",
                    f"train.output_dir={tmp_path / 'b'}")  # fmt: skip
    train(warmed, progress=False)
    train(plain, progress=False)
    a = read_checkpoint(tmp_path / "a" / "checkpoint_last.pth")
    b = read_checkpoint(tmp_path / "b" / "checkpoint_last.pth")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [4e-4, 4e-5, 4e-5]


def test_warmup_rates_in_the_log_and_the_start_line(tmp_path, capsys):
    train(_recipe("train.warmup_steps=4", "train.lr_drop=1", f"train.output_dir={tmp_path}"),
          progress=False)  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # After step s the line holds step s+1's rate: warm to step 4, x0.1 after epoch 1's 3 steps.
    assert [r["lr"] for r in lines if r["type"] == "step"] == pytest.approx(
        [5e-4 * 0.5, 5e-4 * 0.75, 5e-4, 5e-5, 5e-5, 5e-5]
    )
    out = capsys.readouterr().out
    assert "rest 5.00e-04" in out
    assert "linear warm-up over 4 steps, then x0.1 every 1 epochs" in out
