"""Where a training step's time goes: the parts of one step (``ddetr bench --train``) and, in
every run, the time per step spent waiting for data and in the step itself (metrics.jsonl)."""

from __future__ import annotations

import contextlib
import statistics
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

# Steps of a process that are not yet representative: the first builds the attention kernel's
# and oneDNN's kernels, allocates the optimiser's state and fills the allocator's caches.
WARMUP_STEPS = 5


class PartTimer:
    """Seconds per named part of each step: ``with timer("backward"): ...``. A part entered
    several times in one step (the matcher, once per decoder layer) adds up. On a GPU the device
    is synchronised around each part, so its work counts where it was launched."""

    def __init__(self, device: torch.device | None = None) -> None:
        cuda = device is not None and device.type == "cuda"
        self._sync: Callable[[], None] = (
            (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
        )
        self.steps: list[dict[str, float]] = []
        self._current: dict[str, float] = {}
        self._started: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        self.start(part)
        try:
            yield
        finally:
            self.stop(part)

    def start(self, part: str) -> None:
        self._sync()
        self._started[part] = time.perf_counter()

    def stop(self, part: str) -> None:
        self._sync()
        self.add(part, time.perf_counter() - self._started.pop(part))

    def add(self, part: str, seconds: float) -> None:
        """Seconds measured elsewhere (the data loader's) into the current step."""
        self._current[part] = self._current.get(part, 0.0) + seconds

    def next_step(self) -> None:
        """Close the current step's record and start the next one."""
        self.steps.append(self._current)
        self._current = {}

    def median_ms(self, skip: int = 0) -> dict[str, float]:
        """Median milliseconds per step of every part, over the steps after the first ``skip``;
        a part a step did not enter counts 0 there."""
        steps = self.steps[skip:]
        parts = dict.fromkeys(part for step in steps for part in step)
        return {p: 1e3 * statistics.median(s.get(p, 0.0) for s in steps) for p in parts}


class _NoTimer:
    """What ``PartTimer`` does when nothing is measured: nothing, at the cost of one call."""

    _nothing = contextlib.nullcontext()

    def __call__(self, part: str) -> contextlib.AbstractContextManager:
        return self._nothing


NO_TIMER = _NoTimer()
Timer = PartTimer | _NoTimer  # what the training step and the criterion are timed with


def timed_batches(loader: Iterable[Any]) -> Iterator[tuple[Any, float]]:
    """(batch, seconds waited for it) from ``loader``."""
    batches = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        yield batch, time.perf_counter() - start


class StepClock:
    """Each step's seconds waiting for its batches and seconds in the step itself (forward,
    losses, backward, optimiser, EMA); medians per epoch and over the run, leaving out this
    process's first ``warmup`` steps (unless nothing else is left)."""

    def __init__(self, warmup: int = WARMUP_STEPS) -> None:
        self.warmup = warmup
        self.data_s, self.step_s = array("d"), array("d")  # compact: a run may have 10^6 steps
        self._epoch_start = 0

    def start_epoch(self) -> None:
        self._epoch_start = len(self.step_s)

    def add(self, data_s: float, step_s: float) -> None:
        self.data_s.append(data_s)
        self.step_s.append(step_s)

    def _medians(self, start: int) -> dict[str, float]:
        first = max(start, self.warmup) if len(self.step_s) > max(start, self.warmup) else start
        if first >= len(self.step_s):
            return {}
        return {
            "train_s_per_step": statistics.median(self.step_s[first:]),
            "data_s_per_step": statistics.median(self.data_s[first:]),
        }

    def epoch_medians(self) -> dict[str, float]:
        """``train_s_per_step`` and ``data_s_per_step`` of this epoch ({} before any step)."""
        return self._medians(self._epoch_start)

    def run_medians(self) -> dict[str, float]:
        """The same over every step of this process ({} before any)."""
        return self._medians(0)


def step_times_line(medians: dict[str, float]) -> str:
    """The summary's line: is the model or the data the bottleneck?"""
    step, data = medians["train_s_per_step"], medians["data_s_per_step"]
    share = 100 * data / (step + data) if step + data > 0 else 0.0
    return (
        f"{step:.3f} training + {data:.3f} waiting for data ({share:.0f}% of the time; "
        f"medians, the first {WARMUP_STEPS} steps left out)"
    )
