"""Timing a function the same way everywhere: warm-up, then timed calls; CUDA events on GPUs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def time_forward(
    fn: Callable[[], Any], device: torch.device, warmup: int, iters: int
) -> tuple[list[float], float, float | None]:
    """Run ``fn`` warmup + iters times: (per-iteration seconds, timed total seconds, seconds of
    the first warm-up call or None). GPU work is timed with CUDA events and synchronised."""
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    first = None
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        sync()
        if i == 0:
            first = time.perf_counter() - start
    if cuda:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for start_event, end_event in zip(starts, ends, strict=True):
            start_event.record()
            fn()
            end_event.record()
        sync()
        latencies = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)]
        total = starts[0].elapsed_time(ends[-1]) / 1e3
        return latencies, total, first
    latencies = []
    begin = time.perf_counter()
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - start)
    return latencies, time.perf_counter() - begin, first


def median_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median milliseconds of ``repeats`` timed calls after ``warmup`` untimed ones."""
    latencies, _total, _first = time_forward(fn, device, warmup, repeats)
    return statistics.median(latencies) * 1e3
