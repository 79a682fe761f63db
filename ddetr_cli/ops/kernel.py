"""Compiled ms_deform_attn kernels (C++ on CPU, CUDA on GPU) behind the op's "kernel" backend.

`is_available(device)` builds the extension for the device type on first call (see build.py) and
runs it once on a tiny input; failures make it answer (False, reason) and log one warning line, so
callers fall back to the reference backend. `forward` and `backward` follow the contract in
ddetr_cli.ops: value (N, S, M, D), spatial_shapes (L, 2) int64, level_start_index (L,) int64,
sampling_locations (N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P), all on one device.
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


def _smoke_test(ext: Any, device_type: str) -> None:
    """One tiny forward/backward, so a binary that loads but cannot run (e.g. built for another GPU
    architecture) is caught here rather than in the middle of a model."""
    dev = torch.device(device_type)
    value = torch.ones(1, 2, 1, 1, device=dev)
    shapes = torch.tensor([[1, 2]], dtype=torch.long, device=dev)
    starts = torch.zeros(1, dtype=torch.long, device=dev)
    loc = torch.full((1, 1, 1, 1, 1, 2), 0.5, device=dev)
    attn = torch.ones(1, 1, 1, 1, 1, device=dev)
    out = ext.forward(value, shapes, starts, loc, attn)
    ext.backward(value, shapes, starts, loc, attn, torch.ones_like(out))
    if device_type == "cuda":
        torch.cuda.synchronize()
    if not torch.allclose(out.cpu(), torch.ones(1, 1, 1)):
        raise RuntimeError(f"smoke test gave {out.flatten().tolist()} instead of [1.0]")


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


def _probe(kind: str) -> tuple[bool, str]:
    if kind not in ("cpu", "cuda"):
        return False, f"no compiled kernel for device type {kind!r}"
    if kind == "cuda" and not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        ext = build.load_extension(kind)
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
