"""What ddetr runs: a detector called on pictures, the PyTorch ``DeformableDETR`` or an exported
ONNX file run by onnxruntime (``export.runtime.OnnxDetector``). Evaluation, prediction and the
benchmark take any ``Detector`` and never ask which one they have."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Detector(Protocol):
    training: bool

    def __call__(self, images: Sequence[Tensor] | Tensor) -> dict[str, Tensor]:
        """Normalised (3, H, W) pictures (or one (N, 3, H, W) batch) -> at least
        ``pred_logits`` (N, Q, C) and ``pred_boxes`` (N, Q, 4)."""
        ...

    def eval(self) -> Detector: ...

    def train(self, mode: bool = True) -> Detector: ...

    def to(self, device: torch.device | str) -> Detector: ...

    def optimize_for_inference(self) -> Detector:
        """Faster to run, equal outputs up to rounding; never trained or saved afterwards."""
        ...

    def set_attention_backend(self, backend: str | None) -> None:
        """Run the deformable attention on ``backend`` (None or 'auto': the best available)."""
        ...

    def fixed_runtime(self) -> tuple[str, str] | None:
        """(name, what) of the runtime that runs this detector as it is, when nothing about how
        it runs can be chosen (an exported graph: no attention backend, dtype or torch.compile);
        None when it can (the PyTorch model)."""
        ...
