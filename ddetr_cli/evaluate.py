"""COCO box AP of a model on a data set, with pycocotools (docs/design.md#evaluation)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ddetr_cli.errors import DdetrError, UsageError
from ddetr_cli.files import read_json
from ddetr_cli.model import post_process
from ddetr_cli.runtime import all_gather_object, amp_autocast, is_main_process
from ddetr_cli.weights import resolve_model

if TYPE_CHECKING:
    from pycocotools.coco import COCO

    from ddetr_cli.metrics import ThresholdMetrics

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


@torch.no_grad()
def predict_coco_results(
    model: nn.Module,
    data_loader: Iterable,
    device: torch.device | str = "cpu",
    amp: str = "off",
    num_detections: int = 100,
) -> Detections:
    """The detections of this process's share of the data. A picture the evaluation dataset
    could not read (see ``DetectionDataset``) is not run: it is listed in ``unreadable``."""
    from ddetr_cli.data.dataset import unreadable

    device = torch.device(device)
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
                found.results += _detect(model, readable, device, amp, num_detections)
    finally:
        model.train(was_training)
    return found


def _detect(
    model: nn.Module,
    samples: list[tuple[torch.Tensor, dict[str, Any]]],
    device: torch.device,
    amp: str,
    num_detections: int,
) -> list[dict[str, Any]]:
    """COCO-results entries of one batch of (picture, target) samples."""
    images = [image.to(device, non_blocking=True) for image, _ in samples]
    with amp_autocast(device, amp):
        outputs = model(images)
    outputs = {k: outputs[k].float() for k in ("pred_logits", "pred_boxes")}
    sizes = torch.stack([t["orig_size"] for _, t in samples]).to(device)
    results = []
    detections = post_process(outputs, sizes, num_detections)
    for (_, target), det in zip(samples, detections, strict=True):
        boxes = det["boxes"].cpu()
        boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
        for box, score, label in zip(boxes.tolist(), det["scores"].tolist(),
                                     det["labels"].tolist(), strict=True):  # fmt: skip
            results.append({"image_id": int(target["image_id"]), "category_id": label,
                            "bbox": box, "score": score})  # fmt: skip
    return results


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
    results = [r for rank, part in enumerate(gathered) for r in part.results
               if owner[r["image_id"]] == rank]  # fmt: skip
    unreadable = {i: why for part in gathered for i, why in part.unreadable.items()}
    return Detections(results, dict(sorted(unreadable.items())))


def evaluated_image_ids(dataset: Any) -> list[int]:
    """The image ids a dataset evaluates: all of its pictures, unreadable ones included."""
    return [dataset.image_id(i) for i in range(len(dataset))]


def evaluate_coco(
    model: nn.Module,
    data_loader: Iterable,
    coco_gt: COCO,
    device: torch.device | str = "cpu",
    amp: str = "off",
    num_detections: int = 100,
) -> dict[str, float]:
    """Box AP of ``model`` on the pictures of ``data_loader`` (batches of (images, targets) as
    the training data gives them) against ``coco_gt``. Pictures that could not be read count
    as pictures with no detections, with one warning naming them.

    Returns AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl. In a distributed
    run every process evaluates its share and all get the same numbers.
    """
    found = gather_detections(predict_coco_results(model, data_loader, device, amp, num_detections))
    dataset = getattr(data_loader, "dataset", None)
    image_ids = (
        evaluated_image_ids(dataset) if hasattr(dataset, "image_id") else coco_gt.getImgIds()
    )
    if found.unreadable and is_main_process():
        log.warning("val: %s", unreadable_note(found.unreadable, len(image_ids)))
    return coco_stats(coco_gt, found.results, image_ids)


def _match_by_file_name(
    results: list[dict[str, Any]], coco_gt: COCO, path: Path
) -> tuple[list[dict[str, Any]], str]:
    """Detections that carry `file_name` (as `ddetr predict` writes them) get the annotations'
    image ids by file name: the whole relative path when it matches, else the base name."""
    images = coco_gt.dataset["images"]
    by_path = {str(Path(im["file_name"])): im["id"] for im in images}
    by_name: dict[str, list[int]] = {}
    for im in images:
        by_name.setdefault(Path(im["file_name"]).name, []).append(im["id"])
    matched, unmatched = [], 0
    for r in results:
        name = Path(str(r["file_name"]))
        ids = [by_path[str(name)]] if str(name) in by_path else by_name.get(name.name, [])
        if len(ids) != 1:  # absent, or a base name several annotated pictures share
            unmatched += 1
            continue
        matched.append({**r, "image_id": ids[0]})
    if not matched:
        raise DdetrError(
            f"{path}: none of the detections' file names is a picture of the annotations "
            f"(e.g. {results[0]['file_name']})"
        )
    note = "matched to the annotations by file name"
    if unmatched:
        note += f"; {unmatched} detections of pictures the annotations lack were left out"
    return matched, note


def _check_result(r: Any, i: int, path: Path) -> None:
    bbox = r.get("bbox") if isinstance(r, dict) else None
    if (
        not isinstance(r, dict)
        or not {"image_id", "category_id", "bbox", "score"} <= r.keys()
        or not (isinstance(bbox, list) and len(bbox) == 4)
    ):
        raise DdetrError(
            f"{path}: detection {i} needs image_id, category_id, bbox [x, y, w, h] and score"
        )


def _read_results(path: Path, coco_gt: COCO) -> tuple[list[dict[str, Any]], str]:
    """A COCO results file, checked so pycocotools never fails on it half-way, and a note
    saying how its detections were matched to the annotations' pictures."""
    results = read_json(path, "results file")
    if not isinstance(results, list):
        raise DdetrError(f"{path}: a COCO results file is a list of detections")
    for i, r in enumerate(results):
        _check_result(r, i, path)
    note = "matched to the annotations by image_id"
    if results and all("file_name" in r for r in results):
        results, note = _match_by_file_name(results, coco_gt, path)
    known_images, known_categories = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        if r["image_id"] not in known_images:
            raise DdetrError(
                f"{path}: detection {i} names image_id {r['image_id']}, "
                "which the annotations do not have"
            )
        if r["category_id"] not in known_categories:
            raise DdetrError(
                f"{path}: detection {i} names category_id {r['category_id']}, "
                "which the annotations do not have"
            )
    return results, note


@dataclass
class EvaluationReport:
    stats: dict[str, float]
    per_class: dict[int, float | None]
    class_names: dict[int, str]
    num_images: int
    num_detections: int
    detections_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    # COCOeval's eval["precision"] (precision-recall curves), None without detections.
    precision: Any = field(default=None, repr=False)
    # What add_threshold_metrics needs: the ground truth, the detections and the pictures.
    coco_gt: COCO | None = field(default=None, repr=False)
    results: list[dict[str, Any]] | None = field(default=None, repr=False)
    image_ids: list[int] | None = field(default=None, repr=False)
    at_threshold: ThresholdMetrics | None = None
    # Pictures that could not be read (image id -> why): scored as pictures with no detections.
    unreadable: dict[int, str] = field(default_factory=dict)

    def add_threshold_metrics(
        self, score_threshold: float, iou_threshold: float = 0.5
    ) -> ThresholdMetrics:
        """Precision, recall, F1 and the confusion matrix of the detections scoring at least
        ``score_threshold`` (see ddetr_cli.metrics); kept in ``at_threshold`` and the JSON."""
        from ddetr_cli.metrics import threshold_metrics

        if self.coco_gt is None or self.results is None:
            raise DdetrError("this evaluation kept no detections to threshold")
        self.at_threshold = threshold_metrics(
            self.coco_gt, self.results, score_threshold, iou_threshold, self.image_ids
        )
        return self.at_threshold

    def to_json(self) -> dict[str, Any]:
        return {
            **self.stats,
            "per_class": [
                {"category_id": c, "name": self.class_names.get(c, str(c)), "AP": ap}
                for c, ap in self.per_class.items()
            ],
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "detections": str(self.detections_path) if self.detections_path else None,
            "unreadable": [{"image_id": i, "reason": why} for i, why in self.unreadable.items()],
            **(self.at_threshold.to_json() if self.at_threshold is not None else {}),
        }


def _category_names(coco_gt: COCO) -> dict[int, str]:
    return {
        int(c["id"]): str(c.get("name", c["id"])) for c in coco_gt.loadCats(coco_gt.getCatIds())
    }


def score_predictions(predictions: str | Path, annotations: str | Path) -> EvaluationReport:
    """COCO box AP of an existing results file: exactly what pycocotools gives on the files."""
    from ddetr_cli.data.coco import read_coco

    coco_gt = read_coco(annotations)
    results, note = _read_results(Path(predictions), coco_gt)
    stats, per_class, precision = coco_evaluation_curves(coco_gt, results)
    return EvaluationReport(stats, per_class, _category_names(coco_gt), len(coco_gt.getImgIds()),
                            len(results), Path(predictions), notes=[note], precision=precision,
                            coco_gt=coco_gt, results=results)  # fmt: skip


def evaluate_checkpoint(
    weights: str | Path,
    recipe_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    images: str | Path | None = None,
    annotations: str | Path | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    out_dir: str | Path = "evaluation",
) -> EvaluationReport | None:
    """Evaluate weights on the recipe's val split (or ``images`` + ``annotations``) at the
    evaluation transform; writes the detections as COCO results to ``out_dir/detections.json``.

    Under torchrun every process evaluates its share of the pictures and process 0 gathers the
    detections, writes them and returns the report; the other processes return None. Pictures
    that cannot be read are in the report's ``unreadable`` and have no detections.
    """
    from ddetr_cli import runtime

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if (images is None) != (annotations is None):
        raise UsageError("--images and --annotations go together")
    if images is not None:
        given = [f"data.val.images={images}", f"data.val.annotations={annotations}"]
        overrides = [*overrides, "data.format=coco", "data.root=null", *given]
    dev = runtime.resolve_device(device)
    ctx = runtime.setup_distributed(dev.type)
    try:
        dev = ctx.device if ctx.enabled else dev
        model, recipe = resolve_model(weights, recipe_path, overrides, dev)
        return _evaluate_model(model, recipe, batch_size, dev, out_dir, ctx)
    finally:
        runtime.cleanup_distributed()


def _evaluate_model(
    model: nn.Module,
    recipe: dict[str, Any],
    batch_size: int,
    device: torch.device,
    out_dir: str | Path,
    ctx: Any,
) -> EvaluationReport | None:
    from torch.utils.data import DataLoader, DistributedSampler

    from ddetr_cli.data import build_datasets, collate
    from ddetr_cli.files import write_json

    no_data = DdetrError(
        "no evaluation data: the recipe has no val split; pass --images and --annotations "
        "(or data.root=... / data.val.images=... data.val.annotations=...)"
    )
    data = recipe["data"]
    if data["format"] != "shapes" and data["root"] is None and not data["val"]["images"]:
        raise no_data
    model.optimize_for_inference()
    splits = build_datasets(recipe, train=False)
    if splits.val is None:
        raise no_data
    sampler = DistributedSampler(splits.val, shuffle=False) if ctx.enabled else None
    loader = DataLoader(splits.val, batch_size=batch_size, sampler=sampler, collate_fn=collate)
    found = gather_detections(predict_coco_results(
        model, loader, device, recipe["train"]["amp"], recipe["model"]["num_detections"]
    ))  # fmt: skip
    if not ctx.is_main:
        return None
    out = Path(out_dir) / "detections.json"
    write_json(found.results, out)
    image_ids = evaluated_image_ids(splits.val)
    stats, per_class, precision = coco_evaluation_curves(splits.val_coco, found.results, image_ids)
    return EvaluationReport(stats, per_class, _category_names(splits.val_coco),
                            len(image_ids), len(found.results), out, precision=precision,
                            coco_gt=splits.val_coco, results=found.results,
                            image_ids=image_ids, unreadable=found.unreadable)  # fmt: skip
