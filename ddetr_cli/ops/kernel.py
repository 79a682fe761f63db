"""Compiled ms_deform_attn kernels (C++ on CPU, CUDA on GPU) behind the op's "kernel" backend.

`is_available(device)` builds the extension for the device type on first call (see build.py) and
runs it once on a tiny input; failures make it answer (False, reason) and log one warning line, so
callers fall back to the reference backend. `forward` and `backward` follow the contract in
ddetr_cli.ops: value (N, S, M, D), spatial_shapes (L, 2) int64, level_start_index (L,) int64,
sampling_locations (N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P), all on one device;
value float32, float16, bfloat16 or float64, the locations and weights float32 (float64 with a
float64 value). The result and value's gradient are in value's dtype, the other gradients in the
locations' and weights'.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ddetr_cli.ops import build

log = logging.getLogger(__name__)

DISABLE_ENV = "DDETR_DISABLE_KERNEL"

_status: dict[str, tuple[bool, str]] = {}


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


# The smoke test runs the model's configuration: D = 32 channels (the vector path, the shuffle
# reduction, the float4 atomics on sm_90+), L = P = 4 (the compiled-in loop bounds), float32.
_SMOKE_SHAPES = ((6, 7), (3, 4), (2, 2), (1, 1))


def _smoke_inputs(dev: torch.device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    n, lq, m, d, p = 2, 5, 2, 32, 4
    levels = len(_SMOKE_SHAPES)
    s = sum(h * w for h, w in _SMOKE_SHAPES)
    value = torch.randn(n, s, m, d, generator=g)
    # Some points fall outside their level (sampled as zeros), as in the model.
    loc = torch.rand(n, lq, m, levels, p, 2, generator=g) * 1.2 - 0.1
    attn = torch.rand(n, lq, m, levels, p, generator=g)
    grad_out = torch.randn(n, lq, m * d, generator=g)
    shapes = torch.tensor(_SMOKE_SHAPES, dtype=torch.long)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return tuple(t.to(dev) for t in (value, shapes, starts, loc, attn, grad_out))


def _smoke_test(ext: Any, device_type: str) -> None:
    """Forward and backward on the model's path (D = 32, L = P = 4, float32) against the reference
    backend, so a binary that loads but cannot run (e.g. built for another GPU architecture) or
    computes wrong numbers is caught here rather than in the middle of a model."""
    from ddetr_cli.ops.reference import ms_deform_attn_reference

    value, shapes, starts, loc, attn, grad_out = _smoke_inputs(torch.device(device_type))
    out = ext.forward(value, shapes, starts, loc, attn)
    grads = ext.backward(value, shapes, starts, loc, attn, grad_out)
    if device_type == "cuda":
        torch.cuda.synchronize()
    leaves = [t.detach().double().cpu().requires_grad_() for t in (value, loc, attn)]
    want = ms_deform_attn_reference(leaves[0], list(_SMOKE_SHAPES), leaves[1], leaves[2])
    want.backward(grad_out.double().cpu())
    pairs = [("output", out, want.detach())]
    for k, a, b in zip(("value", "loc", "attn"), grads, leaves, strict=True):
        pairs.append((f"grad {k}", a, b.grad))
    for name, got, ref in pairs:
        err = (got.double().cpu() - ref).abs().max().item() if got.numel() else 0.0
        if not err <= 1e-3 * (1.0 + ref.abs().max().item()):  # NaN fails too
            raise RuntimeError(f"smoke test: {name} differs from the reference by {err:.3g}")


def is_available(device: torch.device | str) -> tuple[bool, str]:
    """(usable, human reason) for the compiled kernel on `device`; builds it on first call."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    kind = _device_type(device)
    if kind not in _status:
        _status[kind] = _probe(kind)
        if not _status[kind][0]:
            log.warning("ms_deform_attn %s kernel unavailable: %s", kind, _status[kind][1])
    return _status[kind]


def clear_status() -> None:
    """Forget what `is_available` found, so the next call probes again."""
    _status.clear()


def _probe(kind: str) -> tuple[bool, str]:
    if kind not in ("cpu", "cuda"):
        return False, f"no compiled kernel for device type {kind!r}"
    if kind == "cuda" and not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        ext = build.load_extension(kind)
        # The first use may come under no_grad / inference_mode (predict): the reference's
        # backward needs autograd, whatever the caller's mode.
        with torch.inference_mode(False), torch.enable_grad():
            _smoke_test(ext, kind)
    except build.KernelBuildError as e:
        return False, str(e)
    except Exception as e:  # any failure to run means "use the reference", with the reason
        return False, f"{kind} kernel failed its smoke test: {build.first_line(str(e))}"
    where = build.build_info().get(kind, {}).get("cache_dir", "?")
    return True, f"compiled {kind} kernel ({where})"


def _ext(value: torch.Tensor) -> Any:
    return build.load_extension(value.device.type)


def forward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention; returns (N, Lq, M*D) in value's dtype."""
    return _ext(value).forward(
        value.contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
    )


def backward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    grad_output: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (grad_value, grad_sampling_locations, grad_attention_weights) for grad_output."""
    grad_value, grad_loc, grad_attn = _ext(value).backward(
        value.contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
        grad_output.contiguous(),
    )
    return grad_value, grad_loc, grad_attn
