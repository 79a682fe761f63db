"""COCO box AP with pycocotools (docs/design.md#evaluation): a model's detections on a data set,
gathered over processes, scored against the ground truth."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ddetr_cli.model import post_process
from ddetr_cli.model.protocol import Detector
from ddetr_cli.runtime import all_gather_object, amp_autocast, is_main_process

if TYPE_CHECKING:
    from pycocotools.coco import COCO
    from torch.utils.data import DataLoader

    from ddetr_cli.data.dataset import DetectionDataset

log = logging.getLogger(__name__)

# The 12 numbers COCOeval.summarize() prints, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")  # fmt: skip


@dataclass
class Detections:
    """COCO-results entries (image_id, category_id = class index, xywh bbox, score) and the
    pictures that could not be read (image id -> why), which have no detections."""

    results: list[dict[str, Any]] = field(default_factory=list)
    unreadable: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationRun:
    """How evaluation runs a model: its device, the autocast (a recipe's train.amp) and the
    detections kept per picture (model.num_detections)."""

    device: torch.device | str = "cpu"
    amp: str = "off"
    num_detections: int = 100

    @classmethod
    def of(cls, recipe: dict[str, Any], device: torch.device | str) -> EvaluationRun:
        return cls(device, recipe["train"]["amp"], recipe["model"]["num_detections"])


@torch.no_grad()
def predict_coco_results(
    model: Detector, data_loader: Iterable, run: EvaluationRun = EvaluationRun()
) -> Detections:
    """The detections of this process's share of the data. A picture the evaluation dataset
    could not read (see ``DetectionDataset``) is not run: it is listed in ``unreadable``."""
    from ddetr_cli.data.dataset import unreadable

    found = Detections()
    was_training = model.training
    model.eval()
    try:
        for images, targets in data_loader:
            readable = []
            for image, target in zip(images, targets, strict=True):
                why = unreadable(target)
                if why is None:
                    readable.append((image, target))
                else:
                    found.unreadable[int(target["image_id"])] = why
            if readable:
                found.results += _detect(model, readable, run)
    finally:
        model.train(was_training)
    return found


def model_detections(
    model: Detector, images: Any, sizes: torch.Tensor, run: EvaluationRun
) -> list[dict[str, torch.Tensor]]:
    """The post-processed detections of one forward pass over ``images`` (what the model
    takes: a list of pictures or a batch, on the run's device), under the run's autocast,
    boxes scaled to ``sizes`` ((N, 2) heights and widths)."""
    with amp_autocast(torch.device(run.device), run.amp):
        outputs = model(images)
    outputs = {k: outputs[k].float() for k in ("pred_logits", "pred_boxes")}
    return post_process(outputs, sizes, run.num_detections)


def _detect(
    model: Detector, samples: list[tuple[torch.Tensor, dict[str, Any]]], run: EvaluationRun
) -> list[dict[str, Any]]:
    """COCO-results entries of one batch of (picture, target) samples."""
    device = torch.device(run.device)
    images = [image.to(device, non_blocking=True) for image, _ in samples]
    sizes = torch.stack([t["orig_size"] for _, t in samples]).to(device)
    results = []
    detections = model_detections(model, images, sizes, run)
    for (_, target), det in zip(samples, detections, strict=True):
        results += coco_results(int(target["image_id"]), det)
    return results


def coco_results(image_id: int, detections: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """COCO-results entries (xywh boxes) of one picture's post-processed detections."""
    boxes = detections["boxes"].float().cpu().clone()
    boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
    scores = detections["scores"].float().tolist()
    labels = detections["labels"].tolist()
    return [
        {"image_id": image_id, "category_id": int(label), "bbox": box, "score": score}
        for box, score, label in zip(boxes.tolist(), scores, labels, strict=True)
    ]


def unreadable_note(unreadable: dict[int, str], total: int, shown: int = 3) -> str:
    """One line: how many of ``total`` pictures could not be read, naming the first few."""
    reasons = list(unreadable.values())
    more = f" (+{len(reasons) - shown} more)" if len(reasons) > shown else ""
    return (
        f"{len(reasons)} of {total} pictures could not be read and count as pictures with no "
        f"detections (their boxes still count): {'; '.join(reasons[:shown])}{more}"
    )


def coco_evaluation(
    coco_gt: COCO, results: list[dict[str, Any]], image_ids: list[int] | None = None
) -> tuple[dict[str, float], dict[int, float | None]]:
    """The 12 COCOeval box statistics of ``results`` and each category's AP (IoU 0.50:0.95,
    all areas, 100 detections; None for a category without ground truth).

    ``image_ids`` None evaluates every image of ``coco_gt``, as pycocotools does by default.
    """
    stats, per_class, _ = coco_evaluation_curves(coco_gt, results, image_ids)
    return stats, per_class


def coco_evaluation_curves(
    coco_gt: COCO, results: list[dict[str, Any]], image_ids: list[int] | None = None
) -> tuple[dict[str, float], dict[int, float | None], Any]:
    """:func:`coco_evaluation` and COCOeval's ``eval["precision"]`` array (IoU thresholds x
    101 recall points x categories in sorted id order x areas x max detections), None without
    detections: what the precision-recall curves are drawn from."""
    category_ids = sorted(coco_gt.getCatIds())
    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0), dict.fromkeys(category_ids, 0.0), None
    from pycocotools.cocoeval import COCOeval  # imported when evaluating, not with the package

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # -1 means "no ground truth of that size" (e.g. APl on small pictures): kept as pycocotools
    # gives it, and printed as "n/a".
    stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}
    # precision: [IoU thresholds, recall points, categories, areas (all first), max dets (100 last)]
    precision = evaluator.eval["precision"]
    per_class: dict[int, float | None] = {}
    for k, category in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[int(category)] = float(values.mean()) if values.size else None
    return stats, per_class, precision


def coco_stats(
    coco_gt: COCO, results: list[dict[str, Any]], image_ids: list[int]
) -> dict[str, float]:
    """The 12 COCOeval box statistics of ``results`` on ``image_ids``."""
    return coco_evaluation(coco_gt, results, image_ids)[0]


def gather_detections(local: Detections) -> Detections:
    """Every process's detections (this process's alone outside distributed runs)."""
    gathered = all_gather_object(local)
    # A distributed sampler may repeat pictures to even out the shares: one process per image.
    owner: dict[int, int] = {}
    for rank, part in enumerate(gathered):
        for r in part.results:
            owner.setdefault(r["image_id"], rank)
    results = [
        r
        for rank, part in enumerate(gathered)
        for r in part.results
        if owner[r["image_id"]] == rank
    ]
    unreadable = {i: why for part in gathered for i, why in part.unreadable.items()}
    return Detections(results, dict(sorted(unreadable.items())))


def evaluate_coco(
    model: Detector, data_loader: DataLoader, run: EvaluationRun = EvaluationRun()
) -> dict[str, float]:
    """Box AP of ``model`` on the pictures of ``data_loader`` (batches of (images, targets) of
    a ``DetectionDataset``) against that dataset's ground truth. Pictures that could not be read
    count as pictures with no detections, with one warning naming them.

    Returns AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl. In a distributed
    run every process evaluates its share and all get the same numbers.
    """
    found = gather_detections(predict_coco_results(model, data_loader, run))
    dataset: DetectionDataset = data_loader.dataset
    image_ids = dataset.image_ids()
    if found.unreadable and is_main_process():
        log.warning("val: %s", unreadable_note(found.unreadable, len(image_ids)))
    return coco_stats(dataset.coco_ground_truth(), found.results, image_ids)
