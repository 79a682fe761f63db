"""An exponential moving average of the weights (train.ema), for evaluation and the best
checkpoint.

After each optimiser step: ema = d * ema + (1 - d) * weights, with the decay warming up as
d = decay * (1 - exp(-updates / warmup_steps)), so the first steps follow the weights closely
(as YOLOv5/Ultralytics do, with 2,000 steps). A short run wants a shorter warm-up
(train.ema_warmup): after 5,000 steps the 2,000-step one still holds d at 0.92 x decay, an
average over about a dozen steps. Integer buffers (BatchNorm's num_batches_tracked) are copied.
"""

from __future__ import annotations

import copy
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

WARMUP_STEPS = 2000  # train.ema_warmup's default


class _Pairs(NamedTuple):
    """A model's tensors paired with the average's: floats to average, integers to copy."""

    model: nn.Module
    averaged: list[Tensor]  # the average's floats
    weights: list[Tensor]  # the model's, in the same order
    counters: list[Tensor]  # the average's integer buffers (BatchNorm's num_batches_tracked)
    counts: list[Tensor]  # the model's


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, warmup_steps: int = WARMUP_STEPS) -> None:
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay, self.warmup_steps = decay, warmup_steps
        self.updates = 0
        self._pairs: _Pairs | None = None

    def current_decay(self) -> float:
        if self.warmup_steps == 0:
            return self.decay
        return self.decay * (1 - math.exp(-self.updates / self.warmup_steps))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema += (1 - d) * (weights - ema), for every float tensor in one foreach call."""
        self.updates += 1
        pairs = self._paired(model)
        for counter, count in zip(pairs.counters, pairs.counts, strict=True):
            counter.copy_(count)
        torch._foreach_lerp_(pairs.averaged, pairs.weights, 1 - self.current_decay())

    def _paired(self, model: nn.Module) -> _Pairs:
        """The average's tensors beside the model's, paired by name once per model object: two
        ``state_dict()`` walks a step cost ~1 ms of the demo's ~85. The optimiser, BatchNorm and
        ``load_state_dict`` update the model's tensors in place, so the pairs hold for the run."""
        if self._pairs is None or self._pairs.model is not model:
            source = model.state_dict(keep_vars=True)
            pairs = _Pairs(model, [], [], [], [])
            for key, value in self.module.state_dict(keep_vars=True).items():
                new = source[key].detach()
                if value.dtype.is_floating_point:
                    pairs.averaged.append(value)
                    pairs.weights.append(new)
                else:
                    pairs.counters.append(value)
                    pairs.counts.append(new)
            self._pairs = pairs
        return self._pairs

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
