"""The official training losses (docs/design.md#losses).

Targets follow the official convention: one dict per image with ``labels`` (T,) int64 class
indices and ``boxes`` (T, 4) normalised cxcywh relative to the unpadded picture.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from ddetr_cli.train.matcher import HungarianMatcher, build_matcher
from ddetr_cli.train.timing import NO_TIMER

Targets = list[dict[str, Tensor]]
Matches = list[tuple[Tensor, Tensor]]


def _matched(matches: Matches) -> tuple[Tensor, Tensor]:
    """(batch index, query index) of every matched prediction, image by image."""
    batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)])
    query = torch.cat([q for q, _ in matches])
    return batch, query


class SetCriterion(nn.Module):
    """Focal classification, L1 and GIoU box losses on Hungarian-matched queries, for the
    final decoder layer, every auxiliary layer (suffix ``_i``) and the two-stage encoder
    proposals (suffix ``_enc``, binary targets). ``weight_dict`` holds the official weights;
    the total loss is ``sum(losses[k] * weight_dict[k] for k in weight_dict)``."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        focal_alpha: float = 0.25,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.focal_alpha = focal_alpha
        self.timer = NO_TIMER  # a timing.PartTimer: the matcher and each loss (ddetr bench --train)

    def loss_labels(
        self, logits: Tensor, targets: Targets, matches: Matches, num_boxes: float, log: bool
    ) -> dict[str, Tensor]:
        batch, query = _matched(matches)
        matched_labels = torch.cat(
            [t["labels"][j] for t, (_, j) in zip(targets, matches, strict=True)]
        )
        # One-hot over the real classes: unmatched queries have an all-zero target (no
        # "no-object" logit in the sigmoid formulation).
        onehot = torch.zeros_like(logits)
        onehot[batch, query, matched_labels] = 1
        focal = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=2.0)
        # Official: mean over queries, sum, / num_boxes, * num_queries.
        loss_ce = focal.mean(1).sum() / num_boxes * logits.shape[1]
        out = {"loss_ce": loss_ce}
        if log:
            with torch.no_grad():
                if len(matched_labels):
                    hit = logits[batch, query].argmax(-1) == matched_labels
                    out["class_error"] = 100 - 100 * hit.to(logits.dtype).mean()
                else:
                    out["class_error"] = logits.new_tensor(100.0)
        return out

    def loss_boxes(
        self, boxes: Tensor, targets: Targets, matches: Matches, num_boxes: float
    ) -> dict[str, Tensor]:
        batch, query = _matched(matches)
        src = boxes[batch, query]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, matches, strict=True)]).to(
            src.dtype
        )
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        giou = generalized_box_iou(
            box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy")
        )
        loss_giou = (1 - torch.diag(giou)).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    @torch.no_grad()
    def cardinality_error(self, logits: Tensor, targets: Targets) -> Tensor:
        """Logged only: |#queries whose best class is not the last one - #targets|, as the
        official (a leftover of softmax DETR, kept so the logs compare)."""
        count = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).to(logits.dtype)
        sizes = torch.as_tensor([len(t["labels"]) for t in targets], dtype=logits.dtype)
        return F.l1_loss(count, sizes.to(count.device))

    def _one_level(
        self,
        out: dict[str, Tensor],
        targets: Targets,
        num_boxes: float,
        suffix: str,
        log: bool,
        matches: Matches | None = None,
    ) -> dict[str, Tensor]:
        """The losses of one level of predictions, matched here unless ``matches`` are given."""
        logits, boxes = _fp32(out)
        if matches is None:
            with self.timer("matcher"):
                matches = self.matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
        with self.timer("loss_labels"):
            losses = self.loss_labels(logits, targets, matches, num_boxes, log)
        with self.timer("loss_boxes"):
            losses.update(self.loss_boxes(boxes, targets, matches, num_boxes))
        with self.timer("cardinality_error"):
            losses["cardinality_error"] = self.cardinality_error(logits, targets)
        return {f"{k}{suffix}": v for k, v in losses.items()}

    def forward(
        self, outputs: dict[str, Any], targets: Targets, num_boxes: float | None = None
    ) -> dict[str, Tensor]:
        """The losses, normalised by ``num_boxes`` (default: this batch's target boxes; gradient
        accumulation passes those of all the batches one optimiser step adds up)."""
        if num_boxes is None:
            num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        # The decoder's layers (the last, then the auxiliary ones) are matched in one go.
        levels = [outputs, *outputs.get("aux_outputs", ())]
        with self.timer("matcher"):
            matches = self.matcher.match_levels([_fp32(level) for level in levels], targets)
        losses: dict[str, Tensor] = {}
        for i, (level, level_matches) in enumerate(zip(levels, matches, strict=True)):
            suffix = f"_{i - 1}" if i else ""
            losses.update(
                self._one_level(
                    level, targets, num_boxes, suffix, log=i == 0, matches=level_matches
                )
            )
        if "enc_outputs" in outputs:
            # Two-stage proposals are class-agnostic: every target is class 0
            # (docs/design.md#losses).
            binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            losses.update(self._one_level(outputs["enc_outputs"], binary, num_boxes, "_enc", False))
        return losses

    @staticmethod
    def num_boxes(targets: Targets, device: torch.device) -> float:
        """Target boxes per process, averaged over processes, at least 1 (docs/design.md#losses)."""
        total = torch.as_tensor(
            [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float64, device=device
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            total = total / dist.get_world_size()
        return max(float(total.item()), 1.0)

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum that training minimises."""
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)


def _fp32(out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """A level's (logits, boxes), in float32 when they are half precision (losses in fp32 under
    AMP)."""
    logits, boxes = out["pred_logits"], out["pred_boxes"]
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float(), boxes.float()
    return logits, boxes


def weight_dict_for(recipe: dict[str, Any]) -> dict[str, float]:
    """Official loss weights: the same three coefficients for every decoder layer and the
    two-stage encoder (18 entries for 6 layers, 21 with two-stage)."""
    loss, model = recipe["loss"], recipe["model"]
    base = {
        "loss_ce": loss["cls_loss_coef"],
        "loss_bbox": loss["bbox_loss_coef"],
        "loss_giou": loss["giou_loss_coef"],
    }
    weights = dict(base)
    if model["aux_loss"]:
        for i in range(model["dec_layers"] - 1):
            weights.update({f"{k}_{i}": v for k, v in base.items()})
    if model["two_stage"]:
        weights.update({f"{k}_enc": v for k, v in base.items()})
    return weights


def build_criterion(recipe: dict[str, Any]) -> SetCriterion:
    """criterion(outputs, targets) -> dict of loss tensors; see ``SetCriterion``."""
    return SetCriterion(
        recipe["model"]["num_classes"],
        build_matcher(recipe),
        weight_dict_for(recipe),
        focal_alpha=recipe["loss"]["focal_alpha"],
    )
