"""What predict does with a model's detections, for pictures and video frames alike: the
settings, the detections kept at the threshold, their COCO-results form and their drawing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddetr_cli.evaluation.coco import coco_results
from ddetr_cli.viz.draw import draw_detections


@dataclass(frozen=True)
class Settings:
    """How predict treats what the model finds, the same for pictures and videos."""

    threshold: float  # keep detections scoring at least this
    batch_size: int  # pictures (or frames) per call of the detector
    class_labels: Sequence[str] | None  # names drawn on the boxes
    draw: bool = True  # write drawn pictures and videos
    progress: bool = True  # a progress bar on a terminal (lines in a log, for videos)


# Pictures, (3, H, W) uint8 each, to their detections in their own pixels ("scores", "labels",
# "boxes" as ``model.post_process`` gives them). ``run_predict`` builds one (whole pictures, or
# an ``inference.slicing.SlicedDetector`` under --slice) and runs pictures and video frames
# through it.
Detect = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]


def above_threshold(
    detections: dict[str, torch.Tensor], threshold: float
) -> dict[str, torch.Tensor]:
    """The detections scoring at least ``threshold``, on the CPU ("boxes" and "scores" float)."""
    keep = detections["scores"] >= threshold
    return {
        "boxes": detections["boxes"][keep].float().cpu(),
        "labels": detections["labels"][keep].cpu(),
        "scores": detections["scores"][keep].float().cpu(),
    }


def detection_entries(detections: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """COCO-results entries of one picture's detections (``evaluation.coco.coco_results``)
    without the picture: category_id, bbox [x, y, w, h] and score, rounded for a compact file."""
    return [
        {
            "category_id": entry["category_id"],
            "bbox": [round(v, 2) for v in entry["bbox"]],
            "score": round(entry["score"], 5),
        }
        for entry in coco_results(0, detections)
    ]


def draw_kept(
    picture: torch.Tensor, kept: dict[str, torch.Tensor], settings: Settings
) -> torch.Tensor:
    """The picture with ``kept`` detections drawn, labelled with the settings' class names."""
    return draw_detections(
        picture, kept["boxes"], kept["labels"], kept["scores"], settings.class_labels
    )
