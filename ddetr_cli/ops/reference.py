"""Pure-PyTorch multi-scale deformable attention (the always-available backend).

Sampling follows the official fallback (docs/design.md#bilinear-sampling): ``F.grid_sample``
with bilinear interpolation, zero padding and ``align_corners=False`` on ``grid = 2 * loc - 1``,
which equals ``pix = loc * size - 0.5`` with out-of-range corners contributing 0.

Layouts (official): value (N, S, M, D); sampling_locations (N, Lq, M, L, P, 2) as (x, y) in [0, 1];
attention_weights (N, Lq, M, L, P). The result is (N, Lq, M * D).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# aten enum values for grid_sampler_2d_backward: interpolation "bilinear", padding "zeros".
_BILINEAR = 0
_ZEROS = 0


def _level_values(value: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Split (N, S, M, D) into one (N*M, D, H, W) image batch per level."""
    n, _, m, d = value.shape
    sizes = [h * w for h, w in shapes]
    return [
        part.permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        for part, (h, w) in zip(value.split(sizes, dim=1), shapes, strict=True)
    ]


def _level_grid(grid: torch.Tensor, level: int) -> torch.Tensor:
    """(N, Lq, M, L, P, 2) -> (N*M, Lq, P, 2) for one level, heads folded into the batch."""
    g = grid[:, :, :, level].transpose(1, 2)
    return g.reshape(g.shape[0] * g.shape[1], *g.shape[2:])


def _level_weights(attention_weights: torch.Tensor, level: int) -> torch.Tensor:
    """(N, Lq, M, L, P) -> (N*M, 1, Lq, P) for one level, broadcastable over channels."""
    w = attention_weights[:, :, :, level].transpose(1, 2)
    return w.reshape(w.shape[0] * w.shape[1], 1, *w.shape[2:])


def _sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes_list: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention in plain PyTorch; differentiable with autograd.

    ``spatial_shapes_list`` holds one (H, W) pair of Python ints per level (sum of H*W == S).
    """
    n, _, m, d = value.shape
    lq = sampling_locations.shape[1]
    shapes = [(int(h), int(w)) for h, w in spatial_shapes_list]
    grid = 2 * sampling_locations - 1
    out = None
    # Accumulate level by level instead of stacking all samples: same sum, lower peak memory.
    for level, image in enumerate(_level_values(value, shapes)):
        sampled = _sample(image, _level_grid(grid, level))  # (N*M, D, Lq, P)
        contrib = (sampled * _level_weights(attention_weights, level)).sum(-1)  # (N*M, D, Lq)
        out = contrib if out is None else out + contrib
    if out is None:  # no levels: nothing to sample
        out = value.new_zeros(n * m, d, lq)
    return out.reshape(n, m * d, lq).transpose(1, 2).contiguous()


def ms_deform_attn_reference_backward(
    value: torch.Tensor,
    spatial_shapes_list: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    grad_output: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form gradients of :func:`ms_deform_attn_reference` for (value, locations, weights).

    Uses aten's ``grid_sampler_2d_backward`` (the op autograd itself would call), so it gives the
    same numbers as autograd but needs no autograd graph: it runs inside a custom op, where the
    autograd dispatch keys are excluded and ``torch.autograd.grad`` cannot record anything.
    """
    n, _, m, d = value.shape
    _, lq, _, n_levels, p, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes_list]
    grid = 2 * sampling_locations - 1
    # (N, Lq, M*D) -> (N*M, D, Lq, 1), matching the sampled layout (N*M, D, Lq, P).
    g_out = grad_output.reshape(n, lq, m, d).permute(0, 2, 3, 1).reshape(n * m, d, lq, 1)
    grad_values, grad_grids, grad_weights = [], [], []
    for level, image in enumerate(_level_values(value, shapes)):
        level_grid = _level_grid(grid, level)
        weights = _level_weights(attention_weights, level)
        sampled = _sample(image, level_grid)
        grad_weights.append((sampled * g_out).sum(1))  # (N*M, Lq, P)
        g_image, g_grid = torch.ops.aten.grid_sampler_2d_backward(
            g_out * weights, image, level_grid, _BILINEAR, _ZEROS, False, [True, True]
        )
        h, w = shapes[level]
        grad_values.append(g_image.reshape(n, m, d, h * w).permute(0, 3, 1, 2))
        grad_grids.append(g_grid)  # (N*M, Lq, P, 2)
    grad_value = torch.cat(grad_values, dim=1) if grad_values else torch.zeros_like(value)
    if n_levels == 0:
        return (
            grad_value.contiguous(),
            torch.zeros_like(sampling_locations),
            torch.zeros_like(attention_weights),
        )
    # d(grid)/d(loc) = 2.
    grad_loc = 2 * torch.stack(grad_grids, dim=2).reshape(n, m, lq, n_levels, p, 2)
    grad_attn = torch.stack(grad_weights, dim=2).reshape(n, m, lq, n_levels, p)
    return (
        grad_value.contiguous(),
        grad_loc.transpose(1, 2).contiguous(),
        grad_attn.transpose(1, 2).contiguous(),
    )
