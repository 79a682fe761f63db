"""COCO box AP of a model on a data set, with pycocotools (FIDELITY §5.3)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from ddetr_cli.errors import DdetrError
from ddetr_cli.model import post_process
from ddetr_cli.train.distributed import all_gather_object

# The 12 numbers COCOeval.summarize() prints, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")  # fmt: skip


def amp_autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The autocast context for a recipe's train.amp (off, bf16, fp16)."""
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
            with amp_autocast(device, amp):
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


def coco_evaluation(
    coco_gt: COCO, results: list[dict[str, Any]], image_ids: list[int] | None = None
) -> tuple[dict[str, float], dict[int, float | None]]:
    """The 12 COCOeval box statistics of ``results`` and each category's AP (IoU 0.50:0.95,
    all areas, 100 detections; None for a category without ground truth).

    ``image_ids`` None evaluates every image of ``coco_gt``, as pycocotools does by default.
    """
    category_ids = sorted(coco_gt.getCatIds())
    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0), dict.fromkeys(category_ids, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # -1 means "no ground truth of that size"; report it as 0 so sums and JSON stay simple.
    stats = {name: max(float(v), 0.0) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}
    # precision: [IoU thresholds, recall points, categories, areas (all first), max dets (100 last)]
    precision = evaluator.eval["precision"]
    per_class: dict[int, float | None] = {}
    for k, category in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[int(category)] = float(values.mean()) if values.size else None
    return stats, per_class


def coco_stats(
    coco_gt: COCO, results: list[dict[str, Any]], image_ids: list[int]
) -> dict[str, float]:
    """The 12 COCOeval box statistics of ``results`` on ``image_ids``."""
    return coco_evaluation(coco_gt, results, image_ids)[0]


def gather_results(local: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's detections (this process's alone outside distributed runs)."""
    gathered = all_gather_object(local)
    # A distributed sampler may repeat pictures to even out the shares: one process per image.
    owner: dict[int, int] = {}
    for rank, part in enumerate(gathered):
        for r in part:
            owner.setdefault(r["image_id"], rank)
    return [r for rank, part in enumerate(gathered) for r in part if owner[r["image_id"]] == rank]


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
    results = gather_results(predict_coco_results(model, data_loader, device, amp, num_detections))
    image_ids = coco_gt.getImgIds()
    if hasattr(data_loader, "dataset") and hasattr(data_loader.dataset, "ids"):
        image_ids = list(data_loader.dataset.ids)
    return coco_stats(coco_gt, results, image_ids)


def _read_results(path: Path, coco_gt: COCO) -> list[dict[str, Any]]:
    """A COCO results file, checked so pycocotools never fails on it half-way."""
    if not path.is_file():
        raise DdetrError(f"predictions file not found: {path}")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DdetrError(f"{path}: not a JSON results file ({exc})") from None
    if not isinstance(results, list):
        raise DdetrError(f"{path}: a COCO results file is a list of detections")
    known_images, known_categories = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        bbox = r.get("bbox") if isinstance(r, dict) else None
        if (
            not isinstance(r, dict)
            or not {"image_id", "category_id", "bbox", "score"} <= r.keys()
            or not (isinstance(bbox, list) and len(bbox) == 4)
        ):
            raise DdetrError(
                f"{path}: detection {i} needs image_id, category_id, bbox [x, y, w, h] and score"
            )
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
    return results


@dataclass
class EvaluationReport:
    stats: dict[str, float]
    per_class: dict[int, float | None]
    class_names: dict[int, str]
    num_images: int
    num_detections: int
    detections_path: Path | None = None

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
        }


def _category_names(coco_gt: COCO) -> dict[int, str]:
    return {
        int(c["id"]): str(c.get("name", c["id"])) for c in coco_gt.loadCats(coco_gt.getCatIds())
    }


def score_predictions(predictions: str | Path, annotations: str | Path) -> EvaluationReport:
    """COCO box AP of an existing results file: exactly what pycocotools gives on the files."""
    from ddetr_cli.data.coco import read_coco

    coco_gt = read_coco(annotations)
    results = _read_results(Path(predictions), coco_gt)
    stats, per_class = coco_evaluation(coco_gt, results)
    return EvaluationReport(stats, per_class, _category_names(coco_gt), len(coco_gt.getImgIds()),
                            len(results), Path(predictions))  # fmt: skip


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
    """Evaluate a checkpoint on the recipe's val split (or ``images`` + ``annotations``) at the
    evaluation transform; writes the detections as COCO results to ``out_dir/detections.json``.

    Under torchrun every process evaluates its share of the pictures and process 0 gathers the
    detections, writes them and returns the report; the other processes return None.
    """
    from ddetr_cli.config import load_recipe
    from ddetr_cli.predict import resolve_device
    from ddetr_cli.train import distributed

    if batch_size < 1:
        raise DdetrError(f"--batch-size must be at least 1, got {batch_size}")
    if (images is None) != (annotations is None):
        raise DdetrError("--images and --annotations go together")
    data_overrides = []
    if images is not None:
        data_overrides = ["data.format=coco", "data.root=null", f"data.val.images={images}",
                          f"data.val.annotations={annotations}"]  # fmt: skip
    recipe = load_recipe(recipe_path, [*overrides, *data_overrides]) if recipe_path else None
    dev = resolve_device(device)
    ctx = distributed.setup(dev.type)
    try:
        return _evaluate_checkpoint(
            weights,
            recipe,
            recipe_path,
            [*overrides, *data_overrides],
            batch_size,
            ctx.device if ctx.enabled else dev,
            out_dir,
            ctx,
        )
    finally:
        distributed.cleanup()


def _evaluate_checkpoint(
    weights: str | Path,
    recipe: dict[str, Any] | None,
    recipe_path: str | Path | None,
    overrides: list[str],
    batch_size: int,
    dev: torch.device,
    out_dir: str | Path,
    ctx: Any,
) -> EvaluationReport | None:
    from torch.utils.data import DataLoader, DistributedSampler

    from ddetr_cli.checkpoint import load_model
    from ddetr_cli.data import build_datasets, collate
    from ddetr_cli.io import write_json

    extra = () if recipe_path else overrides  # with a recipe file they are applied already
    model, recipe = load_model(weights, recipe, device=dev, overrides=extra)
    model.optimize_for_inference()
    splits = build_datasets(recipe, train=False)
    if splits.val is None:
        raise DdetrError(
            "no evaluation data: the recipe has no val split; pass --images and --annotations "
            "(or data.root=... / data.val.images=... data.val.annotations=...)"
        )
    sampler = DistributedSampler(splits.val, shuffle=False) if ctx.enabled else None
    loader = DataLoader(splits.val, batch_size=batch_size, sampler=sampler, collate_fn=collate)
    local = predict_coco_results(
        model, loader, dev, recipe["train"]["amp"], recipe["model"]["num_detections"]
    )
    results = gather_results(local)
    if not ctx.is_main:
        return None
    out = Path(out_dir) / "detections.json"
    write_json(results, out)
    image_ids = [splits.val.image_id(i) for i in range(len(splits.val))]
    stats, per_class = coco_evaluation(splits.val_coco, results, image_ids)
    return EvaluationReport(stats, per_class, _category_names(splits.val_coco),
                            len(image_ids), len(results), out)  # fmt: skip
