"""Official post-processing: top-k over queries x classes, boxes in absolute pixels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_convert


@torch.no_grad()
def post_process(
    outputs: dict[str, Any], target_sizes: Tensor, num_detections: int = 100
) -> list[dict[str, Tensor]]:
    """Top `num_detections` (query, class) pairs by sigmoid score per image.

    See docs/design.md#post-processing.

    target_sizes: (B, 2) of (h, w) the boxes are scaled to; no clamping, no NMS.
    Returns per image `scores` (K,), `labels` (K,) class indices, `boxes` (K, 4) xyxy.
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if len(target_sizes) != len(logits):
        raise ValueError(f"{len(target_sizes)} target sizes for a batch of {len(logits)}")
    batch, _, num_classes = logits.shape
    prob = logits.sigmoid().view(batch, -1)
    k = min(num_detections, prob.shape[1])
    scores, index = torch.topk(prob, k, dim=1)
    query = torch.div(index, num_classes, rounding_mode="floor")
    labels = index % num_classes
    xyxy = box_convert(boxes, "cxcywh", "xyxy")
    xyxy = torch.gather(xyxy, 1, query.unsqueeze(-1).expand(-1, -1, 4))
    img_h, img_w = target_sizes.to(xyxy.dtype).unbind(1)
    scale = torch.stack([img_w, img_h, img_w, img_h], dim=1)
    xyxy = xyxy * scale[:, None, :]
    return [
        {"scores": s, "labels": lab, "boxes": b}
        for s, lab, b in zip(scores, labels, xyxy, strict=True)
    ]
