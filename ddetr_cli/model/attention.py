"""Multi-scale deformable attention, eq. 3 of the paper (docs/design.md#equations)."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddetr_cli.model.utils import is_eager
from ddetr_cli.ops import ms_deform_attn


class MSDeformAttn(nn.Module):
    """Each query attends to `n_points` learned points per head around its reference on
    every level; the parameter names follow the official module so checkpoints load."""

    def __init__(
        self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        head_dim = d_model // n_heads
        if head_dim & (head_dim - 1):
            warnings.warn(
                f"head dim {head_dim} is not a power of 2: the attention kernel runs slower",
                stacklevel=2,
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        # None: the op picks the best backend for the tensors' device.
        self.backend: str | None = None
        # When True, forward keeps its sampling locations and weights (for visualisation).
        self.capture = False
        self.captured: dict[str, Tensor] | None = None
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        # Initial offsets: head m points along angle 2*pi*m/M, point p at distance p+1.
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value_input: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """query (N, Lq, C); reference_points (N, Lq, L, 2|4) in [0, 1], (x, y[, w, h]);
        value_input (N, S, C); spatial_shapes (L, 2) of (H, W); padding_mask (N, S)."""
        n, len_q, _ = query.shape
        len_in = value_input.shape[1]
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_input)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, len_in, m, self.d_model // m)
        # Under autocast the value stays in the autocast dtype (the kernel reads it as it is) while
        # sampling positions and weights are kept in float32 (float64 in a float64 model): bf16
        # locations would be 2^-8 of the width apart, 0.65 px at W = 167.
        sampling_dtype = torch.promote_types(reference_points.dtype, torch.float32)
        offsets = self.sampling_offsets(query).view(n, len_q, m, lv, p, 2)
        offsets = _as_dtype(offsets, sampling_dtype)
        weights = self.attention_weights(query).view(n, len_q, m, lv * p)
        weights = _softmax(_as_dtype(weights, sampling_dtype)).view(n, len_q, m, lv, p)
        locations = _sampling_locations(reference_points, offsets, spatial_shapes)
        if self.capture:
            self.captured = {
                "locations": locations.detach(),  # (N, Lq, M, L, P, 2), (x, y) in [0, 1]
                "weights": weights.detach(),  # (N, Lq, M, L, P)
                "reference_points": reference_points.detach(),
                "spatial_shapes": spatial_shapes.detach(),
            }
        output = ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, backend=self.backend
        )
        return self.output_proj(output)


def _sampling_locations(
    reference_points: Tensor, offsets: Tensor, spatial_shapes: Tensor
) -> Tensor:
    """(N, Lq, M, L, P, 2) sampling locations, (x, y) in [0, 1]: the reference point plus the
    offsets (N, Lq, M, L, P, 2) in pixels of each level (point references), or in fractions of
    half the reference box (box references, docs/design.md#box-reference-sampling)."""
    if reference_points.shape[-1] not in (2, 4):
        raise ValueError(
            f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape}"
        )
    n, len_q, m, levels, points, _ = offsets.shape
    if reference_points.requires_grad or not is_eager():
        # Broadcast as written: the reference's gradient sums over heads and points in torch's
        # order, and exported graphs stay as they were.
        ref = reference_points[:, :, None, :, None, :]
        if ref.shape[-1] == 2:
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            return ref + offsets / normalizer[None, None, None, :, None, :]
        return ref[..., :2] + offsets / points * ref[..., 2:] * 0.5
    # The same operations in a layout whose last axis holds a head's L*P*2 numbers: broadcast
    # over a last axis of 2, a CPU computes element by element (4.5 ms of the demo's 11 ms
    # encoder layer); the values are the same.
    row = levels * points * 2
    flat = offsets.reshape(n * len_q, m, row)

    def per_point(t: Tensor) -> Tensor:  # (N, Lq, L, 2) -> (N * Lq, 1, L * P * 2)
        return t[:, :, :, None, :].expand(n, len_q, levels, points, 2).reshape(n * len_q, 1, row)

    if reference_points.shape[-1] == 2:
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        divisor = normalizer[:, None, :].expand(levels, points, 2).reshape(row)
        locations = per_point(reference_points) + flat / divisor
    else:
        xy, wh = per_point(reference_points[..., :2]), per_point(reference_points[..., 2:])
        locations = xy + flat / points * wh * 0.5
    return locations.view(offsets.shape)


# Torch's CPU softmax over a last axis shorter than a vector register (16 float32 with AVX-512)
# reduces element by element: at 3 levels x 4 points, 8 times slower than padded to 16.
_SOFTMAX_WIDTH = 16


def _softmax(weights: Tensor) -> Tensor:
    """Softmax over the last axis (each head's L*K points). On a CPU a float32 axis shorter than
    16 is padded with -inf to 16 (zero weight), which takes torch's vector path: the same
    weights, summed in another order (within 4e-7 of the plain call); 12 points (the shapes
    demo's 3 levels) run 8x faster, 16 (the official 4 levels) are left alone."""
    width = weights.shape[-1]
    if weights.device.type != "cpu" or weights.dtype != torch.float32 or width >= _SOFTMAX_WIDTH:
        return F.softmax(weights, -1)
    if not is_eager():
        return F.softmax(weights, -1)  # exported and compiled graphs stay as they were
    padded = F.pad(weights, (0, _SOFTMAX_WIDTH - width), value=float("-inf"))
    return F.softmax(padded, -1)[..., :width]


def _as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    # No cast node at all when nothing changes (exported graphs stay as they were).
    return t if t.dtype == dtype else t.to(dtype)
