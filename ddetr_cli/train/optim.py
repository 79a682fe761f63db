"""AdamW with the official parameter groups and the step schedule (docs/design.md#optimiser)."""

from __future__ import annotations

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


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: dict[str, Any]
) -> torch.optim.lr_scheduler.StepLR:
    """lr x 0.1 after train.lr_drop epochs (stepped once per epoch)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train["lr_drop"], gamma=0.1)
