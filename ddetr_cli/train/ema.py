"""An exponential moving average of the weights (train.ema), for evaluation and the best
checkpoint.

After each optimiser step: ema = d * ema + (1 - d) * weights, with the decay warming up as
d = decay * (1 - exp(-updates / WARMUP_STEPS)), so the first steps follow the weights closely
(as YOLOv5/Ultralytics do). Integer buffers (BatchNorm's num_batches_tracked) are copied.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

WARMUP_STEPS = 2000


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / WARMUP_STEPS))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        source = model.state_dict()
        for key, value in self.module.state_dict().items():
            new = source[key].detach()
            if value.dtype.is_floating_point:
                value.mul_(d).add_(new.to(value.dtype), alpha=1 - d)
            else:
                value.copy_(new)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
