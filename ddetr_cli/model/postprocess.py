"""Official post-processing: top-k over queries x classes, boxes in absolute pixels.

One tensor-only core, ``top_detections``, that ``post_process`` (per-picture lists, in the
pictures' original sizes), ``batched_detections`` (the ONNX export, traced, in the input's size,
and its check) and the attention view (which also needs the queries) all run; see
docs/design.md#post-processing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_convert


def topk_pairs(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top ``k`` (query, class) pairs of each picture by sigmoid score: (scores, index),
    both (B, K), index = query * classes + class; K = min(k, queries * classes)."""
    batch, queries, classes = logits.shape
    prob = logits.sigmoid().reshape(batch, queries * classes)
    return torch.topk(prob, min(k, queries * classes), dim=1)


def top_detections(
    logits: Tensor, boxes: Tensor, scale: Tensor, k: int = 100
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(scores, labels, boxes, queries) of the top ``k`` pairs, each (B, K[, 4]): boxes as
    x0, y0, x1, y1 multiplied by ``scale`` ((w, h, w, h), shaped (4,) or (B, 1, 4)); no
    clamping, no NMS, no threshold. Tensor operations only, so the export traces it."""
    classes = logits.shape[-1]
    scores, index = topk_pairs(logits, k)
    queries = torch.div(index, classes, rounding_mode="floor")
    xyxy = box_convert(boxes, "cxcywh", "xyxy")
    xyxy = torch.gather(xyxy, 1, queries.unsqueeze(-1).expand(-1, -1, 4))
    return scores, index % classes, xyxy * scale, queries


def batched_detections(
    logits: Tensor, boxes: Tensor, height: Any, width: Any, k: int = 100
) -> tuple[Tensor, Tensor, Tensor]:
    """(scores, labels, boxes) of the top ``k`` pairs of a batch of pictures all of size
    (``height``, ``width``), boxes in its pixels: what a post-processed export returns. The size
    may be traced symbolically."""
    full = [torch.full((), v, dtype=boxes.dtype, device=boxes.device) for v in (width, height)]
    return top_detections(logits, boxes, torch.stack(full).repeat(2), k)[:3]


@torch.no_grad()
def post_process(
    outputs: dict[str, Any], target_sizes: Tensor, num_detections: int = 100
) -> list[dict[str, Tensor]]:
    """Top `num_detections` (query, class) pairs by sigmoid score per image.

    target_sizes: (B, 2) of (h, w) the boxes are scaled to; no clamping, no NMS.
    Returns per image `scores` (K,), `labels` (K,) class indices, `boxes` (K, 4) xyxy.
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if len(target_sizes) != len(logits):
        raise ValueError(f"{len(target_sizes)} target sizes for a batch of {len(logits)}")
    scale = target_sizes.to(boxes.dtype).flip(1).repeat(1, 2)[:, None, :]  # (B, 1, 4): w, h, w, h
    scores, labels, xyxy, _ = top_detections(logits, boxes, scale, num_detections)
    return [
        {"scores": s, "labels": lab, "boxes": b}
        for s, lab, b in zip(scores, labels, xyxy, strict=True)
    ]
