"""AdamW with the official parameter groups, and the learning-rate schedules: the official step
schedule, or a cosine or linear decay over the run, with an optional linear warm-up on top
(docs/design.md#optimiser)."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# Names whose learning rate is scaled by train.lr_linear_proj_mult (official defaults).
LINEAR_PROJ_NAMES = ("reference_points", "sampling_offsets")
BACKBONE_NAMES = ("backbone.0",)


def param_groups(model: nn.Module, train: dict[str, Any]) -> list[dict[str, Any]]:
    """Three groups: the rest (lr), the backbone (lr_backbone) and the attention's sampling
    offsets and reference points (lr * lr_linear_proj_mult). Frozen parameters are left out."""
    rest, backbone, linear_proj = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if any(key in name for key in BACKBONE_NAMES):
            backbone.append(param)
        elif any(key in name for key in LINEAR_PROJ_NAMES):
            linear_proj.append(param)
        else:
            rest.append(param)
    groups = [
        {"params": rest, "lr": train["lr"], "name": "rest"},
        {"params": backbone, "lr": train["lr_backbone"], "name": "backbone"},
        {
            "params": linear_proj,
            "lr": train["lr"] * train["lr_linear_proj_mult"],
            "name": "linear_proj",
        },
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW in torch's fused form: one pass over each tensor instead of the for-loop form's
    ten or so, and one call instead of ten per tensor (on a CPU a tenth of the shapes demo's
    step). The same update, rounded in another order (docs/design.md#optimiser). A checkpoint's
    optimiser state carries its form: runs started without it resume without it."""
    return torch.optim.AdamW(
        param_groups(model, train),
        lr=train["lr"],
        weight_decay=train["weight_decay"],
        fused=True,
    )


LRScheduler = torch.optim.lr_scheduler.LRScheduler


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: dict[str, Any], total_steps: int | None = None
) -> LRScheduler:
    """train.lr_schedule ``step`` (the official): lr x 0.1 after train.lr_drop epochs, stepped
    once per epoch. ``cosine`` / ``linear``: from lr down to 0 over the run's ``total_steps``
    optimiser steps, stepped after every step (``steps_each_step``)."""
    if not steps_each_step(train):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train["lr_drop"], gamma=0.1)
    if total_steps is None:
        raise ValueError(f"lr_schedule {train['lr_schedule']!r} needs the run's total steps")
    decay = functools.partial(decay_factor, train["lr_schedule"], total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, decay)


def warmup_share(step: int, warmup_steps: int) -> float:
    """The share of the scheduled rates that optimiser step ``step`` (0 first) takes during
    train.warmup_steps: a straight line from 1/warmup_steps up to 1, then 1."""
    if step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


@contextlib.contextmanager
def warmed_up(optimizer: torch.optim.Optimizer, share: float) -> Iterator[None]:
    """Every group's rate times ``share`` for one optimiser step, put back afterwards, so the
    schedulers, checkpoints and resume only ever see the scheduled rates (the warm-up is a
    function of the step count alone and composes with any schedule)."""
    if share == 1.0:
        yield
        return
    rates = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = lr * share
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = lr


def steps_each_step(train: dict[str, Any]) -> bool:
    """Whether the schedule moves after every optimiser step (else after every epoch)."""
    return train["lr_schedule"] != "step"


def decay_factor(schedule: str, total_steps: int, step: int) -> float:
    """The learning rate's share after ``step`` of ``total_steps`` optimiser steps: half a
    cosine from 1 to 0, or a straight line from 1 to 0."""
    done = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done))
    return 1.0 - done


def total_optimizer_steps(train: dict[str, Any], batches_per_epoch: int) -> int:
    """Optimiser steps of the whole run: every epoch's (its last may gather fewer than
    train.accumulate batches), or train.max_steps when that ends the run sooner."""
    total = train["epochs"] * math.ceil(batches_per_epoch / train["accumulate"])
    return min(total, train["max_steps"]) if train["max_steps"] else total
