"""Hungarian matching of predictions to targets (docs/design.md#matcher), solved by scipy."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert

from ddetr_cli.train.giou import broadcast_giou

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
        """(..., Q, T) cost of assigning each query to each target: logits (..., Q, C) and
        boxes (..., Q, 4) of any leading shape, against the T targets' labels and boxes."""
        prob = (
            logits.float().sigmoid()
            if logits.dtype in (torch.half, torch.bfloat16)
            else (logits.sigmoid())
        )
        lead = prob.shape[:-1]
        boxes = boxes.to(prob.dtype).reshape(-1, 4)
        tgt = tgt.to(prob.dtype)
        # The focal cost of every class, then each target's class picked: fewer operations when
        # the batch holds more targets than classes, the same costs (bit for bit on the demo's
        # batches; a log's vectorised and scalar paths could round one element differently).
        p = prob.reshape(len(boxes), -1)
        pos = _ALPHA * (1 - p) ** _GAMMA * (-(p + _EPS).log())
        neg = (1 - _ALPHA) * p**_GAMMA * (-(1 - p + _EPS).log())
        # index_select of a 2-D tensor: the same gather as [..., labels], 4x faster on a CPU.
        cost_class = (pos - neg).index_select(1, labels)
        cost_bbox = torch.cdist(boxes, tgt, p=1)
        cost_giou = -_safe_giou(
            box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy")
        )
        cost = (
            self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        )
        return cost.reshape(*lead, len(labels))

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image, (query indices, target indices) as int64 tensors of equal length."""
        return self.match_levels([(outputs["pred_logits"], outputs["pred_boxes"])], targets)[0]

    @torch.no_grad()
    def match_levels(
        self, levels: list[tuple[Tensor, Tensor]], targets: list[dict[str, Tensor]]
    ) -> list[list[tuple[Tensor, Tensor]]]:
        """``forward`` for several levels of predictions at once, each (logits (B, Q, C), boxes
        (B, Q, 4)) with the same B and Q (the decoder layers): every query's cost against every
        target of the batch in one computation and one copy to the host, as the official DETR
        matcher does, then each image's block solved by scipy. The blocks are the costs a
        matcher of one image gives."""
        sizes = [len(t["labels"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [[(empty, empty) for _ in targets] for _ in levels]
        logits = torch.stack([level[0] for level in levels])
        boxes = torch.stack([level[1] for level in levels])
        labels = torch.cat([t["labels"] for t in targets])
        tgt = torch.cat([t["boxes"] for t in targets])
        costs = self.cost_matrix(logits, boxes, labels, tgt).cpu().numpy()  # (L, B, Q, T)
        ends = np.cumsum(sizes)
        return [
            [
                self._solve(level[i, :, end - size : end])
                for i, (size, end) in enumerate(zip(sizes, ends, strict=True))
            ]
            for level in costs
        ]

    def _solve(self, cost: np.ndarray) -> tuple[Tensor, Tensor]:
        """scipy's assignment of one image's (Q, T) costs, non-finite ones replaced first."""
        bad = ~np.isfinite(cost)
        if bad.any():
            count = int(bad.sum())
            self.non_finite_costs += count
            log.debug("matcher: replaced %d non-finite costs", count)
            cost = np.where(bad, _BAD_COST, cost)
        rows, cols = linear_sum_assignment(cost)
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def _safe_giou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU that never asserts: non-finite or inverted boxes give NaN costs (replaced later)."""
    ok_a = torch.isfinite(a).all(-1) & (a[:, 2:] >= a[:, :2]).all(-1)
    ok_b = torch.isfinite(b).all(-1) & (b[:, 2:] >= b[:, :2]).all(-1)
    if bool(ok_a.all()) and bool(ok_b.all()):
        return broadcast_giou(a[:, None], b[None])
    fallback = a.new_tensor([0.0, 0.0, 1.0, 1.0])
    giou = broadcast_giou(
        torch.where(ok_a[:, None], a, fallback)[:, None],
        torch.where(ok_b[:, None], b, fallback)[None],
    )
    return giou.masked_fill(~(ok_a[:, None] & ok_b[None, :]), float("nan"))


def build_matcher(recipe: dict[str, Any]) -> HungarianMatcher:
    cfg = recipe["matcher"]
    return HungarianMatcher(cfg["set_cost_class"], cfg["set_cost_bbox"], cfg["set_cost_giou"])
