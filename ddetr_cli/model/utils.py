"""Small tensor helpers shared by the model modules."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit with the official clamping: σ^-1 of the paper (docs/design.md#inverse-sigmoid)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def is_eager() -> bool:
    """Neither tracing, exporting nor compiling: shortcuts that depend on values or on the
    CPU's layout costs apply to eager runs only, so exported and compiled graphs stay general."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def clones(module: nn.Module, n: int) -> nn.ModuleList:
    """`n` independent deep copies: equal at init, trained separately."""
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


def pad_images(images: list[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
    """Zero-pad CHW images bottom-right to the batch's largest size.

    Returns the (B, C, H, W) batch and its (B, H, W) mask, True on padding, like the
    official `nested_tensor_from_tensor_list` (no size divisibility).
    """
    if isinstance(images, Tensor) and images.dim() == 4:
        b, _, h, w = images.shape
        return images, torch.zeros((b, h, w), dtype=torch.bool, device=images.device)
    if len(images) == 0:
        raise ValueError("expected at least one image")
    for img in images:
        if img.dim() != 3:
            raise ValueError(f"expected CHW image tensors, got shape {tuple(img.shape)}")
    channels = images[0].shape[0]
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    first = images[0]
    batch = first.new_zeros((len(images), channels, height, width))
    mask = torch.ones((len(images), height, width), dtype=torch.bool, device=first.device)
    for img, padded, m in zip(images, batch, mask, strict=True):
        padded[:, : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return batch, mask
