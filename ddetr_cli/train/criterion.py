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
from torchvision.ops import box_convert, sigmoid_focal_loss

from ddetr_cli.train.giou import broadcast_giou
from ddetr_cli.train.matcher import HungarianMatcher, build_matcher
from ddetr_cli.train.timing import NO_TIMER

Targets = list[dict[str, Tensor]]
Matches = list[tuple[Tensor, Tensor]]


class _Pairs:
    """Every matched (prediction, target) pair of L levels of predictions of one batch, level
    after level and image after image in each level, in the matcher's order within an image: the
    order in which the official criterion gathers one level's pairs, so that each level's sums
    add the same numbers in the same order."""

    def __init__(self, matches: list[Matches], sizes: list[int]) -> None:
        per_image = [pair for level in matches for pair in level]
        counts = torch.tensor([len(query) for query, _ in per_image])
        images = torch.arange(len(sizes)).repeat(len(matches))
        # Each target's index in the batch's concatenated targets: its image's offset + its own.
        offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0).repeat(len(matches))
        per_level = counts.view(len(matches), len(sizes)).sum(1)
        self.level_counts = per_level.tolist()
        self.level = torch.arange(len(matches)).repeat_interleave(per_level)
        self.batch = images.repeat_interleave(counts)
        self.query = torch.cat([query for query, _ in per_image])
        self.target = torch.cat([target for _, target in per_image])
        self.target += offsets.repeat_interleave(counts)


def _level_sums(values: Tensor, counts: list[int]) -> Tensor:
    """(L,) sums of the consecutive runs of ``counts`` rows of ``values``: each level's sum of
    all its numbers, as ``values[rows].sum()`` adds them."""
    return torch.stack([run.sum() for run in values.split(counts)])


class SetCriterion(nn.Module):
    """Focal classification, L1 and GIoU box losses on Hungarian-matched queries, for the
    final decoder layer, every auxiliary layer (suffix ``_i``) and the two-stage encoder
    proposals (suffix ``_enc``, binary targets). ``weight_dict`` holds the official weights;
    the total loss is ``sum(losses[k] * weight_dict[k] for k in weight_dict)``.

    The decoder's layers are matched in one computation and their losses computed on the layers
    stacked (each term once for all layers, not once per layer: a few hundred small operations
    fewer a step); each layer's loss adds the same numbers in the same order as the official
    criterion of that layer alone."""

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
        self, logits: Tensor, labels: Tensor, pairs: _Pairs, num_boxes: float, log: bool
    ) -> dict[str, Tensor]:
        """Focal loss of (L, B, Q, C) logits: {"loss_ce": (L,)} and, with ``log``, the first
        level's "class_error"."""
        matched_labels = labels[pairs.target]
        # One-hot over the real classes: unmatched queries have an all-zero target (no
        # "no-object" logit in the sigmoid formulation).
        onehot = torch.zeros_like(logits)
        onehot[pairs.level, pairs.batch, pairs.query, matched_labels] = 1
        focal = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=2.0)
        # Official, per level: mean over queries, sum, / num_boxes, * num_queries.
        loss_ce = focal.mean(2).sum((1, 2)) / num_boxes * logits.shape[2]
        out = {"loss_ce": loss_ce}
        if log:
            with torch.no_grad():
                first = pairs.level_counts[0]
                if first:
                    batch, query = pairs.batch[:first], pairs.query[:first]
                    hit = logits[0, batch, query].argmax(-1) == matched_labels[:first]
                    out["class_error"] = 100 - 100 * hit.to(logits.dtype).mean()
                else:
                    out["class_error"] = logits.new_tensor(100.0)
        return out

    def loss_boxes(
        self, boxes: Tensor, target_boxes: Tensor, pairs: _Pairs, num_boxes: float
    ) -> dict[str, Tensor]:
        """L1 and GIoU losses of (L, B, Q, 4) boxes: {"loss_bbox": (L,), "loss_giou": (L,)}."""
        src = boxes[pairs.level, pairs.batch, pairs.query]
        tgt = target_boxes[pairs.target].to(src.dtype)
        counts = pairs.level_counts
        loss_bbox = _level_sums(F.l1_loss(src, tgt, reduction="none"), counts) / num_boxes
        giou = broadcast_giou(
            box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy")
        )
        loss_giou = _level_sums(1 - giou, counts) / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    @torch.no_grad()
    def cardinality_error(self, logits: Tensor, sizes: list[int]) -> Tensor:
        """Logged only, (L,): |#queries whose best class is not the last one - #targets|,
        averaged over the images, as the official (a leftover of softmax DETR, kept so the logs
        compare)."""
        count = (logits.argmax(-1) != logits.shape[-1] - 1).sum(2).to(logits.dtype)
        sizes_t = torch.as_tensor(sizes, dtype=logits.dtype, device=logits.device)
        return (count - sizes_t).abs().mean(1)

    def _levels(
        self,
        levels: list[tuple[Tensor, Tensor]],
        targets: Targets,
        matches: list[Matches],
        num_boxes: float,
        suffixes: list[str],
        log: bool,
    ) -> dict[str, Tensor]:
        """The losses of levels of (logits, boxes) of one shape, stacked, each level's under
        its suffix."""
        sizes = [len(t["labels"]) for t in targets]
        pairs = _Pairs(matches, sizes)
        logits = torch.stack([level[0] for level in levels])
        boxes = torch.stack([level[1] for level in levels])
        with self.timer("loss_labels"):
            losses = self.loss_labels(
                logits, torch.cat([t["labels"] for t in targets]), pairs, num_boxes, log
            )
        with self.timer("loss_boxes"):
            target_boxes = torch.cat([t["boxes"] for t in targets])
            losses.update(self.loss_boxes(boxes, target_boxes, pairs, num_boxes))
        with self.timer("cardinality_error"):
            losses["cardinality_error"] = self.cardinality_error(logits, sizes)
        # (L,) values: one per level; the 0-d class_error is the first level's alone.
        return {
            f"{name}{suffix}": value if value.dim() == 0 else value[i]
            for i, suffix in enumerate(suffixes)
            for name, value in losses.items()
            if value.dim() == 1 or i == 0
        }

    def _one_level(
        self, out: dict[str, Tensor], targets: Targets, num_boxes: float, suffix: str, log: bool
    ) -> dict[str, Tensor]:
        """The losses of one level of predictions (the two-stage proposals), matched here."""
        logits, boxes = _fp32(out)
        with self.timer("matcher"):
            matches = self.matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
        return self._levels([(logits, boxes)], targets, [matches], num_boxes, [suffix], log)

    def forward(
        self, outputs: dict[str, Any], targets: Targets, num_boxes: float | None = None
    ) -> dict[str, Tensor]:
        """The losses, normalised by ``num_boxes`` (default: this batch's target boxes; gradient
        accumulation passes those of all the batches one optimiser step adds up)."""
        if num_boxes is None:
            num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        # The decoder's layers (the last, then the auxiliary ones) are matched in one go.
        levels = [_fp32(level) for level in [outputs, *outputs.get("aux_outputs", ())]]
        with self.timer("matcher"):
            matches = self.matcher.match_levels(levels, targets)
        suffixes = ["", *(f"_{i}" for i in range(len(levels) - 1))]
        losses = self._levels(levels, targets, matches, num_boxes, suffixes, log=True)
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
