"""The public ``ms_deform_attn`` op: validation, backend dispatch, torch.library registration.

``ddetr::ms_deform_attn`` and ``ddetr::ms_deform_attn_backward`` are opaque custom ops with fake
impls, so torch.compile / export trace them without graph breaks, and FlopCounterMode counts them
with the formulas below. The backend string is resolved in Python before the op is called, so a
compiled graph records a concrete backend ("reference" or "kernel") and stays deterministic.

Dtypes: ``value`` is used in its own dtype (float32, float16 or bfloat16: no copy), the sampling
locations and attention weights in float32, which is what the model gives under autocast and what
the kernels read; anything in float64 makes everything float64. The result and value's gradient
have value's dtype, the locations' and weights' gradients theirs.
"""

from __future__ import annotations

import weakref
from typing import NoReturn

import torch
from torch.utils.flop_counter import register_flop_formula

from ddetr_cli.ops import backends
from ddetr_cli.ops.reference import ms_deform_attn_reference, ms_deform_attn_reference_backward

_NAME = "ms_deform_attn"


def ms_deform_attn_macs(N: int, Lq: int, M: int, D: int, L: int, P: int) -> int:
    """Multiply-adds of one forward: per sampled point and channel, 4 bilinear corners + 1 weight.

    Torch's FLOP convention counts 2 FLOPs per multiply-add; the backward is counted as 2x forward.
    """
    return N * Lq * M * D * L * P * 5


# --------------------------------------------------------------------------- custom ops


def _shapes_list(spatial_shapes: torch.Tensor) -> list[tuple[int, int]]:
    # Syncs on CUDA; only the reference path needs Python ints (for split/reshape).
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


@torch.library.custom_op("ddetr::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    n, _, m, d = value.shape
    lq = sampling_locations.shape[1]
    if n == 0 or lq == 0:  # empty output: no backend needs to run (kernels may not allow it)
        return value.new_zeros(n, lq, m * d)
    if backend == "kernel":
        out = backends.kernel_module().forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    else:
        # grid_sample wants one dtype: the reference runs in the sampling dtype (float32).
        work = sampling_locations.dtype
        out = ms_deform_attn_reference(
            value.to(work), _shapes_list(spatial_shapes), sampling_locations, attention_weights
        ).to(value.dtype)
    # The fake impl promises a contiguous (N, Lq, M*D) result; compiled code relies on its strides.
    return out.reshape(n, lq, m * d).contiguous()


@_ms_deform_attn_op.register_fake
def _ms_deform_attn_fake(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    n, _, m, d = value.shape
    return value.new_empty(n, sampling_locations.shape[1], m * d)


@torch.library.custom_op("ddetr::ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    grad_output: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if value.shape[0] == 0 or sampling_locations.shape[1] == 0:
        return (
            torch.zeros_like(value, memory_format=torch.contiguous_format),
            torch.zeros_like(sampling_locations, memory_format=torch.contiguous_format),
            torch.zeros_like(attention_weights, memory_format=torch.contiguous_format),
        )
    if backend == "kernel":
        grads = backends.kernel_module().backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output.contiguous(),
        )
    else:
        work = sampling_locations.dtype
        grads = ms_deform_attn_reference_backward(
            value.to(work),
            _shapes_list(spatial_shapes),
            sampling_locations,
            attention_weights,
            grad_output.to(work),
        )
    grad_value, grad_loc, grad_attn = grads
    grad_value = grad_value.to(value.dtype)
    return grad_value.contiguous(), grad_loc.contiguous(), grad_attn.contiguous()


@_ms_deform_attn_backward_op.register_fake
def _ms_deform_attn_backward_fake(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    grad_output: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        value.new_empty(value.shape),
        sampling_locations.new_empty(sampling_locations.shape),
        attention_weights.new_empty(attention_weights.shape),
    )


def _setup_context(ctx, inputs, output) -> None:
    *tensors, backend = inputs
    ctx.save_for_backward(*tensors)
    ctx.backend = backend


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        ctx.saved_tensors
    )
    grad_value, grad_loc, grad_attn = _ms_deform_attn_backward_op(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_output,
        ctx.backend,
    )
    # No gradients for spatial_shapes, level_start_index or the backend string.
    return grad_value, None, None, grad_loc, grad_attn, None


_ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- FLOP formulas


def _flops(value_shape, sampling_locations_shape) -> int:
    n, lq, m, n_levels, p, _ = sampling_locations_shape
    return 2 * ms_deform_attn_macs(n, lq, m, value_shape[3], n_levels, p)


@register_flop_formula(torch.ops.ddetr.ms_deform_attn)
def _forward_flops(value_shape, ss_shape, lsi_shape, loc_shape, *args, **kwargs) -> int:
    return _flops(value_shape, loc_shape)


@register_flop_formula(torch.ops.ddetr.ms_deform_attn_backward)
def _backward_flops(value_shape, ss_shape, lsi_shape, loc_shape, *args, **kwargs) -> int:
    return 2 * _flops(value_shape, loc_shape)


# --------------------------------------------------------------------------- public entry


def _fail(message: str) -> NoReturn:
    raise ValueError(f"{_NAME}: {message}")


def _validate(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    """Shape/dtype checks; metadata only, plus value checks when the shapes live on the CPU."""
    tensors = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    _check_ranks_and_dtypes(tensors)
    _check_sizes_agree(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    _check_levels_once(spatial_shapes, level_start_index, value.shape[1])


def _check_ranks_and_dtypes(tensors: dict[str, torch.Tensor]) -> None:
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} must be a Tensor, got {type(t).__name__}")
    expected = {
        "value": (4, "4-D (N, S, M, D)"),
        "sampling_locations": (6, "6-D (N, Lq, M, L, P, 2)"),
        "attention_weights": (5, "5-D (N, Lq, M, L, P)"),
        "spatial_shapes": (2, "(L, 2) of (H, W)"),
        "level_start_index": (1, "1-D (L,)"),
    }
    for name, (rank, what) in expected.items():
        shape = tensors[name].shape
        last_ok = name not in ("sampling_locations", "spatial_shapes") or (
            len(shape) > 0 and shape[-1] == 2
        )
        if len(shape) != rank or not last_ok:
            _fail(f"{name} must be {what}, got shape {tuple(shape)}")
    for name in ("spatial_shapes", "level_start_index"):
        if tensors[name].dtype != torch.int64:
            _fail(f"{name} must be int64, got {tensors[name].dtype}")
    for name in ("value", "sampling_locations", "attention_weights"):
        if not tensors[name].is_floating_point():
            _fail(f"{name} must be floating point, got {tensors[name].dtype}")


def _check_sizes_agree(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    n, _, m, _ = value.shape
    loc_n, lq, loc_m, n_levels, p, _ = sampling_locations.shape
    attn_shape = attention_weights.shape
    dims = {"N": (n, loc_n, attn_shape[0]), "M": (m, loc_m, attn_shape[2])}
    for dim, (a, b, c) in dims.items():
        if not a == b == c:
            _fail(
                f"{dim} differs: value {a}, sampling_locations {b}, attention_weights {c} "
                f"(shapes {tuple(value.shape)}, {tuple(sampling_locations.shape)}, "
                f"{tuple(attention_weights.shape)})"
            )
    if tuple(attention_weights.shape) != (n, lq, m, n_levels, p):
        _fail(
            f"attention_weights shape {tuple(attention_weights.shape)} does not match "
            f"sampling_locations (N, Lq, M, L, P) = {(n, lq, m, n_levels, p)}"
        )
    if spatial_shapes.shape[0] != n_levels or level_start_index.shape[0] != n_levels:
        _fail(
            f"number of levels differs: sampling_locations has L={n_levels}, spatial_shapes "
            f"{spatial_shapes.shape[0]}, level_start_index {level_start_index.shape[0]}"
        )
    if n_levels == 0:
        _fail("need at least one feature level")
    devices = {value.device, sampling_locations.device, attention_weights.device}
    if len(devices) != 1:
        _fail(
            f"value, sampling_locations and attention_weights must share a device, got "
            f"{value.device}, {sampling_locations.device}, {attention_weights.device}"
        )


def _check_levels(spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, s: int) -> None:
    """The level metadata (CPU tensors) against the value's length S."""
    if bool((spatial_shapes <= 0).any()):
        _fail(f"spatial_shapes must be positive, got {spatial_shapes.tolist()}")
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    total = int(areas.sum())
    if total != s:
        _fail(
            f"sum of H*W over spatial_shapes {spatial_shapes.tolist()} is {total}, "
            f"but value has S={s}"
        )
    expected = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    if not torch.equal(level_start_index, expected):
        _fail(
            f"level_start_index {level_start_index.tolist()} does not match spatial_shapes "
            f"(expected {expected.tolist()})"
        )


# The level metadata each shapes tensor passed, so it is read once: on a GPU reading it is a device
# sync, and a model passes one shapes tensor to all its attention layers. Keyed by the tensors'
# identity (weak references: a new tensor at a reused address is checked anew) and in-place
# version, and by S.
_levels_checked: dict[int, tuple] = {}
_LEVELS_CHECKED_MAX = 64


def _version(t: torch.Tensor) -> int:
    # Inference tensors have no version counter (and cannot be changed outside inference mode).
    return -1 if t.is_inference() else t._version


def _check_levels_once(
    spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, s: int
) -> None:
    """:func:`_check_levels` once per (shapes, start index, S), on any device. Skipped while
    tracing (torch.compile / export: the values are data-dependent), on the meta device and during
    CUDA graph capture (no sync allowed); the CUDA kernel still skips a level that does not fit."""
    if torch.compiler.is_compiling() or spatial_shapes.device.type == "meta":
        return
    if spatial_shapes.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    key = id(spatial_shapes)
    state = (_version(spatial_shapes), id(level_start_index), _version(level_start_index), s)
    known = _levels_checked.get(key)
    if known is not None and known[0]() is spatial_shapes and known[1:] == state:
        return
    _check_levels(spatial_shapes.cpu(), level_start_index.cpu(), s)
    if len(_levels_checked) >= _LEVELS_CHECKED_MAX:
        _levels_checked.clear()
    _levels_checked[key] = (weakref.ref(spatial_shapes), *state)


@torch.compiler.assume_constant_result
def _resolve_for_compile(device: torch.device, requested: str | None) -> str:
    # Dynamo runs this eagerly at trace time and bakes the string into the graph.
    return backends.resolve_backend(device, requested)[0]


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention; returns (N, Lq, M*D).

    value (N, S, M, D); spatial_shapes (L, 2) int64 (H, W); level_start_index (L,) int64;
    sampling_locations (N, Lq, M, L, P, 2) as (x, y) in [0, 1]; attention_weights (N, Lq, M, L, P).
    ``backend``: None/"auto" (kernel when available, else reference), "reference" or "kernel".
    value keeps its dtype (a float16/bfloat16 value is not copied); the locations and weights are
    used in float32; float64 anywhere makes everything float64. The result has value's dtype.
    Raises ValueError on malformed inputs and RuntimeError when "kernel" is requested but
    unavailable.
    """
    _validate(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if torch.compiler.is_compiling():
        concrete = _resolve_for_compile(value.device, backend)
    else:
        concrete = backends.resolve_backend(value.device, backend)[0]

    value_dtype, sampling_dtype = op_dtypes(value, sampling_locations, attention_weights)
    if concrete == "kernel":
        # The kernel contract: shapes and start indices on the value's device.
        spatial_shapes = spatial_shapes.to(value.device, non_blocking=True)
        level_start_index = level_start_index.to(value.device, non_blocking=True)
    # Contiguous inputs are what the kernel needs and what the saved-for-backward tensors are.
    return _ms_deform_attn_op(
        value.to(value_dtype).contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.to(sampling_dtype).contiguous(),
        attention_weights.to(sampling_dtype).contiguous(),
        concrete,
    )


def op_dtypes(
    value: torch.Tensor, sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> tuple[torch.dtype, torch.dtype]:
    """(value's dtype, the locations' and weights' dtype) the op runs in: float64 for all when any
    is float64; else value as it is and float32 locations and weights (bfloat16 locations would
    be too coarse: 2^-8 of the width, 0.65 px at W = 167)."""
    dtypes = {value.dtype, sampling_locations.dtype, attention_weights.dtype}
    if torch.float64 in dtypes:
        return torch.float64, torch.float64
    return value.dtype, torch.float32
