"""ONNX translations of ``ddetr::ms_deform_attn`` for torch.onnx's dynamo exporter.

The custom op stays opaque through ``torch.export`` (it has a fake impl), so the exporter meets
one ``ddetr.ms_deform_attn.default`` node per attention and asks its translation table for ONNX.
:func:`translation_table` gives it one of two translations, both standard-domain operators only
and both following the official sampling rule of ``reference.py`` (bilinear, zero padding,
``align_corners=False``: pixel = loc * size - 0.5, corners outside the map count 0):

- ``"gridsample"`` (the default, faster in onnxruntime): the reference's own form, one
  ``GridSample`` per level (opset >= 16).
- ``"gather"``: every corner of every sampling point of every level in one ``Gather`` from the
  flattened value, its bilinear weight times the attention weight (zero for corners off the map)
  in one ``MatMul``. No per-level subgraph and no GridSample, for runtimes whose GridSample is
  missing or wrong (TensorRT has miscompiled it, NVIDIA/TensorRT#4813).

Both are written in ONNX opset 18 (what torch.onnx builds in before converting to the asked
opset). Functions here run while the exporter traces: their arguments are symbolic values whose
static dimensions (heads, levels, points, channels) are plain ints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

SAMPLERS = ("gridsample", "gather")
DEFAULT_SAMPLER = "gridsample"  # faster in onnxruntime (docs/export.md)
BUILD_OPSET = 18  # the opset torch.onnx's translations are written in


def _op() -> Any:
    from ddetr_cli.extras import require

    return require("onnxscript", "export").opset18


def _ints(op: Any, values: list[int]) -> Any:
    return op.Constant(value_ints=list(values))


def _static_dims(sampling_locations: Any) -> tuple[int, int, int]:
    """(M, L, P) of (N, Lq, M, L, P, 2): the exporter knows them as ints."""
    shape = sampling_locations.shape
    dims = []
    for index in (2, 3, 4):
        dim = shape[index] if shape is not None else None
        if not isinstance(dim, int):
            raise ValueError(
                "ms_deform_attn export needs static heads, levels and points; "
                f"sampling_locations has shape {shape}"
            )
        dims.append(dim)
    return dims[0], dims[1], dims[2]


class _Setup(NamedTuple):
    """What both translations start from: the opset, the static (M, L, P) and the symbolic
    one-element shapes N, D (channels per head) and Lq."""

    op: Any
    heads: int
    levels: int
    points: int
    n: Any
    d: Any
    lq: Any

    def constant(self, number: float, like: Any) -> Any:
        return self.op.CastLike(self.op.Constant(value_float=number), like)

    def merge_heads(self, out: Any) -> Any:
        """(N, Lq, M, D) -> (N, Lq, M*D), the op's result."""
        return self.op.Reshape(out, self.op.Concat(self.n, self.lq, _ints(self.op, [-1]), axis=0))


def _setup(value: Any, sampling_locations: Any) -> _Setup:
    op = _op()
    m, levels, p = _static_dims(sampling_locations)
    n = op.Shape(value, start=0, end=1)
    d = op.Shape(value, start=3, end=4)
    lq = op.Shape(sampling_locations, start=1, end=2)
    return _Setup(op, m, levels, p, n, d, lq)


def ms_deform_attn_gather(
    value: Any,
    spatial_shapes: Any,
    level_start_index: Any,
    sampling_locations: Any,
    attention_weights: Any,
    backend: str = "reference",
) -> Any:
    """Gather-based bilinear sampling: value (N, S, M, D) -> (N, Lq, M*D)."""
    setup = _setup(value, sampling_locations)
    op, m, n_levels, p, n, d, lq = setup
    s = op.Shape(value, start=1, end=2)
    dtype_like = op.CastLike

    # Per-level sizes and starts, shaped (L, 1) to broadcast over (N, Lq, M, L, P).
    sizes = dtype_like(spatial_shapes, sampling_locations)
    h_f = op.Unsqueeze(op.Gather(sizes, op.Constant(value_int=0), axis=1), [1])
    w_f = op.Unsqueeze(op.Gather(sizes, op.Constant(value_int=1), axis=1), [1])
    h_i = op.Unsqueeze(op.Gather(spatial_shapes, op.Constant(value_int=0), axis=1), [1])
    w_i = op.Unsqueeze(op.Gather(spatial_shapes, op.Constant(value_int=1), axis=1), [1])
    start = op.Unsqueeze(level_start_index, [1])

    # Pixel coordinates with align_corners=False: loc * size - 0.5.
    loc_x = op.Squeeze(op.Slice(sampling_locations, [0], [1], [5]), [5])
    loc_y = op.Squeeze(op.Slice(sampling_locations, [1], [2], [5]), [5])
    half = setup.constant(0.5, sampling_locations)
    one = setup.constant(1.0, sampling_locations)
    x = op.Sub(op.Mul(loc_x, w_f), half)
    y = op.Sub(op.Mul(loc_y, h_f), half)
    x0 = op.Floor(x)
    y0 = op.Floor(y)
    fx = op.Sub(x, x0)
    fy = op.Sub(y, y0)
    gx = op.Sub(one, fx)
    gy = op.Sub(one, fy)
    x0_i = op.Cast(x0, to=7)  # INT64
    y0_i = op.Cast(y0, to=7)
    one_i = op.Constant(value_int=1)
    zero_i = op.Constant(value_int=0)
    x1_i = op.Add(x0_i, one_i)
    y1_i = op.Add(y0_i, one_i)
    w_max = op.Sub(w_i, one_i)
    h_max = op.Sub(h_i, one_i)

    corner_index, corner_weight = [], []
    for xi, yi, wgt in (
        (x0_i, y0_i, op.Mul(gx, gy)),
        (x1_i, y0_i, op.Mul(fx, gy)),
        (x0_i, y1_i, op.Mul(gx, fy)),
        (x1_i, y1_i, op.Mul(fx, fy)),
    ):
        inside = op.And(
            op.And(op.GreaterOrEqual(xi, zero_i), op.LessOrEqual(xi, w_max)),
            op.And(op.GreaterOrEqual(yi, zero_i), op.LessOrEqual(yi, h_max)),
        )
        # Off-map corners read a valid position (clamped) with weight 0: zero padding.
        xc = op.Min(op.Max(xi, zero_i), w_max)
        yc = op.Min(op.Max(yi, zero_i), h_max)
        corner_index.append(op.Add(op.Add(start, op.Mul(yc, w_i)), xc))
        corner_weight.append(op.Where(inside, wgt, op.CastLike(zero_i, wgt)))
    # (N, Lq, M, L, P, 4) -> (N, M, Lq, L*P*4)
    index = op.Concat(*[op.Unsqueeze(t, [5]) for t in corner_index], axis=5)
    weight = op.Concat(*[op.Unsqueeze(t, [5]) for t in corner_weight], axis=5)
    weight = op.Mul(weight, op.Unsqueeze(attention_weights, [5]))
    k = n_levels * p * 4
    rows = op.Concat(n, lq, _ints(op, [m, k]), axis=0)
    index = op.Transpose(op.Reshape(index, rows), perm=[0, 2, 1, 3])
    weight = op.Transpose(op.Reshape(weight, rows), perm=[0, 2, 1, 3])

    # Rows of the flattened value (N*M*S, D): row (n*M + m)*S + position.
    heads = op.Reshape(op.Range(zero_i, op.Mul(op.Squeeze(n, [0]), m), one_i), [-1, m, 1, 1])
    index = op.Add(index, op.Mul(heads, op.Squeeze(s, [0])))
    flat = op.Reshape(op.Transpose(value, perm=[0, 2, 1, 3]), op.Concat(_ints(op, [-1]), d, axis=0))
    sampled = op.Gather(flat, index, axis=0)  # (N, M, Lq, K, D)
    out = op.MatMul(op.Unsqueeze(weight, [3]), sampled)  # (N, M, Lq, 1, D)
    return setup.merge_heads(op.Transpose(op.Squeeze(out, [3]), perm=[0, 2, 1, 3]))


def ms_deform_attn_gridsample(
    value: Any,
    spatial_shapes: Any,
    level_start_index: Any,
    sampling_locations: Any,
    attention_weights: Any,
    backend: str = "reference",
) -> Any:
    """One GridSample per level, as reference.py: value (N, S, M, D) -> (N, Lq, M*D)."""
    setup = _setup(value, sampling_locations)
    op, m, n_levels, p, n, d, lq = setup
    two = setup.constant(2.0, sampling_locations)
    one = setup.constant(1.0, sampling_locations)
    grid = op.Sub(op.Mul(sampling_locations, two), one)
    areas = op.ReduceProd(spatial_shapes, [1], keepdims=0)
    out = None
    for level in range(n_levels):
        hw = op.Gather(spatial_shapes, op.Constant(value_int=level), axis=0)  # (2,)
        begin = op.Slice(level_start_index, [level], [level + 1], [0])
        end = op.Add(begin, op.Slice(areas, [level], [level + 1], [0]))
        image = op.Slice(value, begin, end, [1])  # (N, HW, M, D)
        image = op.Transpose(image, perm=[0, 2, 3, 1])  # (N, M, D, HW)
        image = op.Reshape(image, op.Concat(_ints(op, [-1]), d, hw, axis=0))  # (N*M, D, H, W)
        level_grid = op.Squeeze(op.Slice(grid, [level], [level + 1], [3]), [3])  # (N,Lq,M,P,2)
        level_grid = op.Transpose(level_grid, perm=[0, 2, 1, 3, 4])
        grid_shape = op.Concat(_ints(op, [-1]), lq, _ints(op, [p, 2]), axis=0)
        level_grid = op.Reshape(level_grid, grid_shape)
        sampled = op.GridSample(
            image, level_grid, align_corners=0, mode="bilinear", padding_mode="zeros"
        )  # (N*M, D, Lq, P)
        w = op.Squeeze(op.Slice(attention_weights, [level], [level + 1], [3]), [3])
        weight_shape = op.Concat(_ints(op, [-1, 1]), lq, _ints(op, [p]), axis=0)
        w = op.Reshape(op.Transpose(w, perm=[0, 2, 1, 3]), weight_shape)
        contrib = op.ReduceSum(op.Mul(sampled, w), [3], keepdims=0)  # (N*M, D, Lq)
        out = contrib if out is None else op.Add(out, contrib)
    out = op.Reshape(out, op.Concat(n, _ints(op, [m]), d, lq, axis=0))
    return setup.merge_heads(op.Transpose(out, perm=[0, 3, 1, 2]))


_TRANSLATIONS: dict[str, Callable[..., Any]] = {
    "gather": ms_deform_attn_gather,
    "gridsample": ms_deform_attn_gridsample,
}


def translation_table(sampler: str = DEFAULT_SAMPLER) -> dict[Any, Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``."""
    import torch

    import ddetr_cli.ops.op  # noqa: F401  (registers torch.ops.ddetr.ms_deform_attn)

    if sampler not in _TRANSLATIONS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return {torch.ops.ddetr.ms_deform_attn.default: _TRANSLATIONS[sampler]}
