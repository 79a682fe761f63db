"""COCO box AP of a model on a data set, with pycocotools (FIDELITY §5.3)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from ddetr_cli.model import post_process
from ddetr_cli.train.distributed import all_gather_object

# The 12 numbers COCOeval.summarize() prints, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")  # fmt: skip


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict_coco_results(
    model: nn.Module,
    data_loader: Iterable,
    device: torch.device | str = "cpu",
    amp: str = "off",
    num_detections: int = 100,
) -> list[dict[str, Any]]:
    """COCO-results entries (image_id, category_id = class index, xywh bbox, score) of this
    process's share of the data."""
    device = torch.device(device)
    results: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        for images, targets in data_loader:
            images = [img.to(device, non_blocking=True) for img in images]
            with _autocast(device, amp):
                outputs = model(images)
            outputs = {k: outputs[k].float() for k in ("pred_logits", "pred_boxes")}
            sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
            for target, det in zip(
                targets, post_process(outputs, sizes, num_detections), strict=True
            ):
                boxes = det["boxes"].cpu()
                boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
                for box, score, label in zip(boxes.tolist(), det["scores"].tolist(),
                                             det["labels"].tolist(), strict=True):  # fmt: skip
                    results.append({"image_id": int(target["image_id"]), "category_id": label,
                                    "bbox": box, "score": score})  # fmt: skip
    finally:
        model.train(was_training)
    return results


def coco_stats(coco_gt: COCO, results: list[dict[str, Any]], image_ids: list[int]) -> dict:
    """The 12 COCOeval box statistics of ``results`` on ``image_ids``."""
    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # -1 means "no ground truth of that size"; report it as 0 so sums and JSON stay simple.
    return {name: max(float(v), 0.0) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}


def evaluate_coco(
    model: nn.Module,
    data_loader: Iterable,
    coco_gt: COCO,
    device: torch.device | str = "cpu",
    amp: str = "off",
    num_detections: int = 100,
) -> dict[str, float]:
    """Box AP of ``model`` on the pictures of ``data_loader`` (batches of (images, targets) as
    the training data gives them) against ``coco_gt``.

    Returns AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl. In a distributed
    run every process evaluates its share and all get the same numbers.
    """
    local = predict_coco_results(model, data_loader, device, amp, num_detections)
    gathered = all_gather_object(local)
    # A distributed sampler may repeat pictures to even out the shares: one process per image.
    owner: dict[int, int] = {}
    for rank, part in enumerate(gathered):
        for r in part:
            owner.setdefault(r["image_id"], rank)
    results = [
        r for rank, part in enumerate(gathered) for r in part if owner[r["image_id"]] == rank
    ]
    image_ids = coco_gt.getImgIds()
    if hasattr(data_loader, "dataset") and hasattr(data_loader.dataset, "ids"):
        image_ids = list(data_loader.dataset.ids)
    return coco_stats(coco_gt, results, image_ids)
