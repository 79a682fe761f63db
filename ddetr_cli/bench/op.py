"""`ddetr bench op`: the attention op alone at Deformable DETR's shapes, every backend side by side.

Shapes are those of one 800x1333 picture: 4 levels (100,167) (50,84) (25,42) (13,21), 8 heads x 32
channels, 4 points; the encoder has a query per pixel (22,223), the decoder 300. Sampling points lie
a few pixels around each query's reference point, as in a trained model ("uniform" scatters them
over the whole map, the cache's worst case). Each row also gives the memory floor: the bytes the
op must read and write at least over a measured copy bandwidth, the fastest it could possibly run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ddetr_cli.bench.backends import (
    backends_to_time,
    check_backend_choice,
    check_dtype_names,
    check_dtypes_on,
    speedups,
)
from ddetr_cli.bench.machine import machine_info
from ddetr_cli.bench.timing import median_ms
from ddetr_cli.runtime import DTYPES

LEVELS_800x1333 = ((100, 167), (50, 84), (25, 42), (13, 21))
HEADS, CHANNELS, POINTS = 8, 32, 4


@dataclass
class OpResult:
    part: str  # encoder | decoder
    batch: int
    dtype: str
    pass_: str  # fwd | fwd+bwd
    backend: str
    ms: float
    floor_ms: float
    gbytes_per_s: float
    speedup: float | None = None  # over the reference backend


def _pixel_centres(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([xs, ys], -1).reshape(-1, 2)


def make_inputs(
    part: str, batch: int, dtype: torch.dtype, device: torch.device, locations: str = "local"
) -> tuple[torch.Tensor, ...]:
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights; value in
    ``dtype``, locations and weights in float32 (float64 with float64), as the model gives them
    under autocast."""
    g = torch.Generator().manual_seed(0)
    shapes = torch.tensor(LEVELS_800x1333, dtype=torch.int64)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    s, n_levels = int(areas.sum()), len(LEVELS_800x1333)
    lq = s if part == "encoder" else 300
    value = torch.randn(batch, s, HEADS, CHANNELS, generator=g)
    if locations == "uniform":
        loc = torch.rand(batch, lq, HEADS, n_levels, POINTS, 2, generator=g)
    else:
        if part == "encoder":  # query i sits at pixel i of the flattened pyramid
            ref = torch.cat([_pixel_centres(h, w) for h, w in LEVELS_800x1333])
            ref = ref.view(1, lq, 1, 1, 1, 2).expand(batch, -1, -1, -1, -1, -1)
        else:
            ref = torch.rand(batch, lq, 1, 1, 1, 2, generator=g)
        size = shapes.flip(-1).to(torch.float32).view(1, 1, 1, n_levels, 1, 2)  # (W, H)
        offsets = torch.randn(batch, lq, HEADS, n_levels, POINTS, 2, generator=g) * 2.0
        loc = ref + offsets / size
    weights = torch.rand(batch, lq, HEADS, n_levels * POINTS, generator=g).softmax(-1)
    weights = weights.view(batch, lq, HEADS, n_levels, POINTS)
    sampling = torch.float64 if dtype == torch.float64 else torch.float32
    return (
        value.to(device=device, dtype=dtype),
        shapes.to(device),
        starts.to(device),
        loc.to(device=device, dtype=sampling),
        weights.to(device=device, dtype=sampling),
    )


def op_errors(
    part: str, batch: int, dtype: torch.dtype, device: torch.device, backend: str = "kernel"
) -> dict[str, dict[str, float]]:
    """Forward and backward of ``backend`` against the float64 reference on the same (rounded)
    inputs: per output (out, grad_value, grad_loc, grad_attn) the largest absolute error, that
    over the largest magnitude of the reference ("rel"), and the error's norm over the
    reference's ("norm"). Points within 1e-3 px of a cell border are moved off it first: there
    the location gradient jumps, and float32 and float64 may round to different cells."""
    from ddetr_cli.ops import ms_deform_attn

    value, shapes, starts, loc, weights = make_inputs(part, batch, dtype, device)
    size = shapes.flip(-1).to(loc.dtype).view(1, 1, 1, -1, 1, 2)  # (W, H) per level
    pix = loc.double() * size - 0.5
    near = (pix - pix.round()).abs() < 1e-3
    loc = torch.where(near, loc + 2e-3 / size, loc)
    g = torch.Generator().manual_seed(1)
    n, _, m, d = value.shape
    grad_out = torch.randn(n, loc.shape[1], m * d, generator=g).to(device=device, dtype=dtype)
    results = {}
    for name, cast in (("got", lambda t: t), ("want", lambda t: t.double())):
        leaves = [cast(t).detach().requires_grad_() for t in (value, loc, weights)]
        chosen = backend if name == "got" else "reference"
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=chosen)
        grads = torch.autograd.grad(out, leaves, cast(grad_out))
        results[name] = (out.detach(), *grads)
    errors = {}
    names = ("out", "grad_value", "grad_loc", "grad_attn")
    for key, got, want in zip(names, results["got"], results["want"], strict=True):
        diff = got.double() - want
        worst, scale = diff.abs().max().item(), want.abs().max().item()
        norm = (diff.norm() / want.norm()).item() if scale else worst
        errors[key] = {"max_abs": worst, "rel": worst / scale if scale else worst, "norm": norm}
    return errors


def floor_bytes(inputs: Sequence[torch.Tensor], backward: bool) -> int:
    """Bytes the op must move at least: read every input once and write the output once
    (backward: also read the output gradient and write the three input gradients)."""
    value, _, _, loc, weights = inputs
    n, _, m, d = value.shape
    out = n * loc.shape[1] * m * d * value.element_size()
    reads = sum(t.numel() * t.element_size() for t in (value, loc, weights))
    forward = reads + out
    return forward + (out + reads if backward else 0)


def copy_bandwidth(device: torch.device, megabytes: int = 256) -> float:
    """Best-of-5 device copy bandwidth in bytes/s (read + write), the practical peak."""
    src = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        best = min(best, median_ms(lambda: dst.copy_(src), device, repeats=1, warmup=1))
    return 2 * src.numel() * 4 / (best / 1e3)


def _runner(inputs: Sequence[torch.Tensor], backend: str, backward: bool) -> Callable[[], Any]:
    from ddetr_cli.ops import ms_deform_attn

    value, shapes, starts, loc, weights = inputs
    if not backward:

        def forward() -> Any:
            with torch.no_grad():
                return ms_deform_attn(value, shapes, starts, loc, weights, backend=backend)

        return forward
    leaves = [t.detach().requires_grad_() for t in (value, loc, weights)]

    def forward_backward() -> Any:
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend)
        return torch.autograd.grad(out, leaves, torch.ones_like(out))

    return forward_backward


def run_bench_op(
    device: str = "cpu",
    batches: Sequence[int] = (1, 2, 8),
    dtypes: Sequence[str] = ("fp32",),
    parts: Sequence[str] = ("encoder", "decoder"),
    backend: str = "all",
    locations: str = "local",
    repeats: int | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Time the op for every (part, batch, dtype, pass, backend); returns a JSON-ready report."""
    from ddetr_cli.runtime import resolve_device

    check_dtype_names(dtypes)
    check_backend_choice(backend)
    dev = resolve_device(device)
    check_dtypes_on(dtypes, dev)
    backends = [name for name, _why in backends_to_time(dev, backend)]
    repeats = repeats or (20 if dev.type == "cuda" else 5)
    bandwidth = copy_bandwidth(dev)
    results: list[OpResult] = []
    for part, batch, dtype_name in itertools.product(parts, batches, dtypes):
        inputs = make_inputs(part, batch, DTYPES[dtype_name], dev, locations)
        for backward, name in itertools.product((False, True), backends):
            label = "fwd+bwd" if backward else "fwd"
            say(f"{part} batch {batch} {dtype_name} {label} {name}")
            ms = median_ms(_runner(inputs, name, backward), dev, repeats, warmup=1)
            floor = floor_bytes(inputs, backward)
            floor_ms, rate = round(floor / bandwidth * 1e3, 3), round(floor / ms / 1e6, 2)
            results.append(
                OpResult(part, batch, dtype_name, label, name, round(ms, 3), floor_ms, rate)
            )
    gains = speedups(
        results,
        setting=lambda r: (r.part, r.batch, r.dtype, r.pass_),
        speed=lambda r: 1 / r.ms if r.ms else None,
        backend=lambda r: r.backend,
    )
    for result, gain in zip(results, gains, strict=True):
        result.speedup = round(gain, 2) if gain else None
    return {
        "device": machine_info(dev),
        "threads": torch.get_num_threads(),
        "shapes": {
            "levels": [list(s) for s in LEVELS_800x1333],
            "heads": HEADS,
            "channels": CHANNELS,
            "points": POINTS,
            "encoder_queries": sum(h * w for h, w in LEVELS_800x1333),
            "decoder_queries": 300,
            "locations": locations,
        },
        "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "protocol": f"median of {repeats} after 1 warm-up"
        + ("; CUDA events" if dev.type == "cuda" else "; wall clock"),
        "results": [
            {("pass" if k == "pass_" else k): v for k, v in asdict(r).items()} for r in results
        ],
    }
