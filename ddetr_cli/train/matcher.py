"""Hungarian matching of predictions to targets (docs/design.md#matcher), solved by scipy."""

from __future__ import annotations

import logging
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou

log = logging.getLogger(__name__)

# The official matcher hard-codes the focal parameters of its class cost.
_ALPHA, _GAMMA, _EPS = 0.25, 2.0, 1e-8
# Stand-in for costs that are not finite: worse than any real one, still solvable.
_BAD_COST = 1e8


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to target boxes, per image, minimising
    ``class * focal_cost + bbox * L1 + giou * (-GIoU)``.

    Non-finite costs (NaN or inf boxes or logits, e.g. after an fp16 overflow) are replaced
    by a large finite value before scipy sees them, and counted in ``non_finite_costs``.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matcher costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.non_finite_costs = 0  # running count, read and reset by the engine's logging

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, tgt: Tensor) -> Tensor:
        """(Q, T) cost of assigning each query to each target of one image."""
        prob = (
            logits.float().sigmoid()
            if logits.dtype in (torch.half, torch.bfloat16)
            else (logits.sigmoid())
        )
        boxes = boxes.to(prob.dtype)
        tgt = tgt.to(prob.dtype)
        p = prob[:, labels]
        pos = _ALPHA * (1 - p) ** _GAMMA * (-(p + _EPS).log())
        neg = (1 - _ALPHA) * p**_GAMMA * (-(1 - p + _EPS).log())
        cost_class = pos - neg
        cost_bbox = torch.cdist(boxes, tgt, p=1)
        cost_giou = -_safe_giou(
            box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy")
        )
        return (
            self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        )

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image, (query indices, target indices) as int64 tensors of equal length."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        matches = []
        for i, target in enumerate(targets):
            labels, tgt = target["labels"], target["boxes"]
            if len(labels) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                matches.append((empty, empty))
                continue
            cost = self.cost_matrix(logits[i], boxes[i], labels, tgt).cpu()
            bad = ~torch.isfinite(cost)
            if bad.any():
                count = int(bad.sum())
                self.non_finite_costs += count
                log.debug("matcher: replaced %d non-finite costs", count)
                cost = cost.masked_fill(bad, _BAD_COST)
            rows, cols = linear_sum_assignment(cost.numpy())
            matches.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return matches


def _safe_giou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU that never asserts: non-finite or inverted boxes give NaN costs (replaced later)."""
    ok_a = torch.isfinite(a).all(-1) & (a[:, 2:] >= a[:, :2]).all(-1)
    ok_b = torch.isfinite(b).all(-1) & (b[:, 2:] >= b[:, :2]).all(-1)
    if bool(ok_a.all()) and bool(ok_b.all()):
        return generalized_box_iou(a, b)
    fallback = a.new_tensor([0.0, 0.0, 1.0, 1.0])
    giou = generalized_box_iou(
        torch.where(ok_a[:, None], a, fallback), torch.where(ok_b[:, None], b, fallback)
    )
    return giou.masked_fill(~(ok_a[:, None] & ok_b[None, :]), float("nan"))


def build_matcher(recipe: dict[str, Any]) -> HungarianMatcher:
    cfg = recipe["matcher"]
    return HungarianMatcher(cfg["set_cost_class"], cfg["set_cost_bbox"], cfg["set_cost_giou"])
