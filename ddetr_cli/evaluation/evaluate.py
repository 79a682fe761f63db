"""``ddetr evaluate``: COCO box AP of weights on a data set, or of an existing results file, as a
report (per-class AP, precision-recall curves, metrics at a score threshold)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ddetr_cli import runtime
from ddetr_cli.errors import DdetrError, UsageError
from ddetr_cli.evaluation.coco import (
    Detections,
    EvaluationRun,
    coco_evaluation_curves,
    gather_detections,
    predict_coco_results,
)
from ddetr_cli.evaluation.max_detections import EveryDetection, every_detection
from ddetr_cli.files import read_json
from ddetr_cli.model.protocol import Detector
from ddetr_cli.weights import resolve_model

if TYPE_CHECKING:
    from pycocotools.coco import COCO

    from ddetr_cli.evaluation.thresholds import ThresholdMetrics
    from ddetr_cli.inference.slicing import SliceOptions


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
    # The numbers counting every detection, when a picture has more than COCOeval's 100.
    every_detection: EveryDetection | None = None
    slicing: dict[str, Any] | None = None  # SlicedDetector.summary() under --slice

    def add_threshold_metrics(
        self, score_threshold: float, iou_threshold: float = 0.5
    ) -> ThresholdMetrics:
        """Precision, recall, F1 and the confusion matrix of the detections scoring at least
        ``score_threshold`` (``evaluation.thresholds``); kept in ``at_threshold`` and the JSON."""
        from ddetr_cli.evaluation.thresholds import threshold_metrics

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
            "every_detection": self.every_detection and self.every_detection.to_json(),
            "slicing": self.slicing,
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
    return EvaluationReport(
        stats,
        per_class,
        _category_names(coco_gt),
        len(coco_gt.getImgIds()),
        len(results),
        Path(predictions),
        notes=[note],
        precision=precision,
        coco_gt=coco_gt,
        results=results,
        every_detection=every_detection(coco_gt, results),
    )


def evaluate_checkpoint(
    weights: str | Path,
    recipe_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    images: str | Path | None = None,
    annotations: str | Path | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    out_dir: str | Path = "evaluation",
    slicing: SliceOptions | None = None,
) -> EvaluationReport | None:
    """Evaluate weights on the recipe's val split (or ``images`` + ``annotations``) at the
    evaluation transform (with ``slicing``: each picture cut into tiles, ``batch_size`` tiles
    at a time); writes the detections as COCO results to ``out_dir/detections.json``.

    Under torchrun every process evaluates its share of the pictures and process 0 gathers the
    detections, writes them and returns the report; the other processes return None. Pictures
    that cannot be read are in the report's ``unreadable`` and have no detections.
    """
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
        return _evaluate_model(model, recipe, batch_size, dev, out_dir, ctx, slicing)
    finally:
        runtime.cleanup_distributed()


def _val_detections(
    model: Detector,
    recipe: dict[str, Any],
    dataset: Any,
    batch_size: int,
    device: torch.device,
    sampler: Any,
    slicing: SliceOptions | None,
) -> tuple[Detections, dict[str, Any] | None]:
    """(this process's detections on the val split (all processes' after gathering), the
    sliced detector's summary or None): whole pictures in batches, or each cut into tiles."""
    from torch.utils.data import DataLoader

    from ddetr_cli.data import collate

    if slicing is None:
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)
        local = predict_coco_results(model, loader, EvaluationRun.of(recipe, device))
        return gather_detections(local), None
    from ddetr_cli.evaluation.sliced import sliced_detections

    local, sliced = sliced_detections(model, recipe, dataset, slicing, batch_size, device, sampler)
    return gather_detections(local), sliced


def _evaluate_model(
    model: Detector,
    recipe: dict[str, Any],
    batch_size: int,
    device: torch.device,
    out_dir: str | Path,
    ctx: runtime.Dist,
    slicing: SliceOptions | None = None,
) -> EvaluationReport | None:
    from torch.utils.data import DistributedSampler

    from ddetr_cli.data import build_datasets
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
    found, sliced = _val_detections(model, recipe, splits.val, batch_size, device, sampler, slicing)
    if not ctx.is_main:
        return None
    out = Path(out_dir) / "detections.json"
    write_json(found.results, out)
    image_ids, coco_gt = splits.val.image_ids(), splits.val.coco_ground_truth()
    stats, per_class, precision = coco_evaluation_curves(coco_gt, found.results, image_ids)
    return EvaluationReport(
        stats,
        per_class,
        _category_names(coco_gt),
        len(image_ids),
        len(found.results),
        out,
        precision=precision,
        coco_gt=coco_gt,
        results=found.results,
        image_ids=image_ids,
        unreadable=found.unreadable,
        every_detection=every_detection(coco_gt, found.results, image_ids),
        slicing=sliced,
    )
