"""What predict does with a model's detections, for pictures and video frames alike: the
settings, the detections kept at the threshold, and their COCO-results form."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Settings:
    """How predict treats what the model finds, the same for pictures and videos."""

    threshold: float  # keep detections scoring at least this
    batch_size: int  # pictures (or frames) per forward pass
    class_labels: Sequence[str] | None  # names drawn on the boxes
    draw: bool = True  # write drawn pictures and videos
    progress: bool = True  # a progress bar on a terminal (lines in a log, for videos)


# Pictures, (3, H, W) uint8 each, to their detections in their own pixels ("scores", "labels",
# "boxes" as ``model.post_process`` gives them). ``run_predict`` builds one and runs pictures
# and video frames through it; a detector of another kind (one that slices large pictures into
# tiles) fits here as it is.
Detect = Callable[[Sequence[torch.Tensor]], list[dict[str, torch.Tensor]]]


def detection_entries(
    boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor
) -> list[dict[str, Any]]:
    """Detections as COCO results without the picture: xyxy boxes become [x, y, w, h]."""
    return [
        {
            "category_id": int(label),
            "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)],
            "score": round(score, 5),
        }
        for (x0, y0, x1, y1), label, score in zip(
            boxes.tolist(), labels.tolist(), scores.tolist(), strict=True
        )
    ]


def above_threshold(
    detections: dict[str, torch.Tensor], threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes, labels, scores) on the CPU of the detections scoring at least ``threshold``."""
    keep = detections["scores"] >= threshold
    scores = detections["scores"][keep].float().cpu()
    labels = detections["labels"][keep].cpu()
    boxes = detections["boxes"][keep].float().cpu()
    return boxes, labels, scores
