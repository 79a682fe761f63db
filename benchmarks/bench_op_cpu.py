"""Times ms_deform_attn on the CPU: reference backend (grid_sample) vs the compiled C++ kernel.

Shapes are Deformable DETR's at an 800x1066 input: 4 levels (100,134) (50,67) (25,34) (13,17),
M=8 heads, D=32 channels, P=4 points. "encoder": N=1, one query per pixel (17,821 queries);
"decoder": N=1, 300 queries. float32, through the public op with autograd (what a model sees).

Sampling locations: "local" puts each query's points a few pixels around a reference point (as a
trained encoder does); "uniform" scatters them over the whole map (no cache locality: worst case).

Usage: python benchmarks/bench_op_cpu.py [--threads 2] [--repeats 7] [--locations local uniform]
       [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from ddetr_cli.ops import build, ms_deform_attn

SHAPES = [(100, 134), (50, 67), (25, 34), (13, 17)]
HEADS, CHANNELS, POINTS = 8, 32, 4


def pixel_centres(h: int, w: int) -> torch.Tensor:
    """(h*w, 2) normalised (x, y) centres of an h x w map, row-major."""
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([xs, ys], -1).reshape(-1, 2)


def make_inputs(lq: int, locations: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    n_levels = len(SHAPES)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(1, s, HEADS, CHANNELS, generator=g)
    spatial = torch.tensor(SHAPES, dtype=torch.int64)
    areas = spatial[:, 0] * spatial[:, 1]
    start = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    size = spatial.flip(-1).to(torch.float32).view(1, 1, 1, n_levels, 1, 2)  # (W, H)
    if locations == "uniform":
        loc = torch.rand(1, lq, HEADS, n_levels, POINTS, 2, generator=g)
    else:
        if lq == s:  # encoder: query i sits at pixel i of the flattened pyramid, in that order
            ref = torch.cat([pixel_centres(h, w) for h, w in SHAPES]).view(1, lq, 1, 1, 1, 2)
        else:  # decoder: reference points anywhere
            ref = torch.rand(1, lq, 1, 1, 1, 2, generator=g)
        offsets = torch.randn(1, lq, HEADS, n_levels, POINTS, 2, generator=g) * 2.0  # pixels
        loc = ref + offsets / size
    attn = torch.rand(1, lq, HEADS, n_levels * POINTS, generator=g).softmax(-1)
    return value, spatial, start, loc, attn.view(1, lq, HEADS, n_levels, POINTS)


def run_once(inputs: tuple[torch.Tensor, ...], backend: str, backward: bool) -> None:
    value, spatial, start, loc, attn = inputs
    if backward:
        leaves = [t.detach().requires_grad_() for t in (value, loc, attn)]
        out = ms_deform_attn(leaves[0], spatial, start, leaves[1], leaves[2], backend=backend)
        out.backward(torch.ones_like(out))
    else:
        with torch.no_grad():
            ms_deform_attn(value, spatial, start, loc, attn, backend=backend)


def median_ms(
    fns: dict[str, Callable[[], None]], repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Interleaves the candidates (one warm-up each) so machine noise hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append((clock() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--locations", nargs="+", default=["local", "uniform"])
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time, robust on a shared machine but meaningful only with 1 thread",
    )
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    build.load_extension("cpu")
    s = sum(h * w for h, w in SHAPES)
    print(
        f"threads={torch.get_num_threads()} clock={args.clock} torch={torch.__version__} "
        "float32, median ms"
    )
    header = f"{'shape':9} {'locations':9} {'pass':8} {'reference':>10} {'kernel':>9} speed-up"
    print(header)
    print("-" * len(header))
    for name, lq in (("encoder", s), ("decoder", 300)):
        for locations in args.locations:
            inputs = make_inputs(lq, locations)
            for backward, label in ((False, "fwd"), (True, "fwd+bwd")):
                fns = {
                    b: functools.partial(run_once, inputs, b, backward)
                    for b in ("reference", "kernel")
                }
                ms = median_ms(fns, args.repeats, clock)
                speed = ms["reference"] / ms["kernel"]
                print(
                    f"{name:9} {locations:9} {label:8} {ms['reference']:10.1f} {ms['kernel']:9.1f}"
                    f" {speed:7.1f}x"
                )


if __name__ == "__main__":
    main()
