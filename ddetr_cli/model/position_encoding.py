"""Sine position encodings: the feature-map one and the two-stage proposal one."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _interleave_sin_cos(pos: Tensor) -> Tensor:
    """(..., F) angles -> (..., F) with sin on even and cos on odd features, interleaved."""
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> Tensor:
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)


class PositionEmbeddingSine(nn.Module):
    """Normalised sine encoding of the valid (unpadded) region (docs/design.md#sine-encoding).

    Computed in float32 from the padding mask with Deformable DETR's -0.5 offset; the
    first `num_feats` channels encode y, the next `num_feats` encode x.
    """

    def __init__(self, num_feats: int = 128, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.scale = 2 * math.pi

    def forward(self, mask: Tensor) -> Tensor:
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = _frequencies(self.num_feats, self.temperature, mask.device)
        pos_x = _interleave_sin_cos(x_embed[..., None] / dim_t)
        pos_y = _interleave_sin_cos(y_embed[..., None] / dim_t)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def proposal_pos_embed(proposals: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Two-stage query encoding of unactivated (cx, cy, w, h) proposals (paper appendix A.5;
    docs/design.md#proposal-encoding).

    sigmoid, times 2*pi, no -0.5 offset; coordinate-major, sin/cos interleaved:
    (B, K, 4) -> (B, K, 4 * num_feats).
    """
    dim_t = _frequencies(num_feats, temperature, proposals.device)
    pos = proposals.sigmoid() * (2 * math.pi)
    return _interleave_sin_cos(pos[..., None] / dim_t).flatten(2)
