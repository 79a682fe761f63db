"""Datasets described by a recipe's ``data`` section."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ddetr_cli.data import shapes
from ddetr_cli.data.coco import CocoDataset
from ddetr_cli.data.dataset import DetectionDataset
from ddetr_cli.data.formats import warn_problems
from ddetr_cli.data.shapes_dataset import ShapesDataset
from ddetr_cli.data.sources import data_classes, load_source, refuse_unread_paths

log = logging.getLogger(__name__)
__all__ = ["Splits", "build_datasets", "data_classes"]


@dataclass
class Splits:
    train: DetectionDataset | None
    val: DetectionDataset | None  # its coco_ground_truth() is what val AP is scored against
    # The class count the labels need (YOLO's names, COCO's max category id + 1, VOC's names,
    # or model.class_names when the recipe sets it) and one name per class index ("N/A" where
    # no category has that index).
    num_classes: int
    class_names: list[str]


def build_datasets(recipe: dict[str, Any], train: bool = True) -> Splits:
    """The training split (when ``train``) and the val split (if the data has one), of any
    format ``data.format`` names or ``auto`` finds in ``data.root`` (see ``formats.py``)."""
    data, seed = recipe["data"], recipe["train"]["seed"]
    if data["format"] == "shapes":
        refuse_unread_paths(data, "shapes")
        cfg = data["shapes"]
        task = cfg["task"]
        train_set = (
            ShapesDataset(
                cfg["seed"], cfg["train_images"], train=True, augment=data["augment"], task=task
            )
            if train
            else None
        )
        val_set = ShapesDataset(shapes.VAL_SEED, cfg["val_images"], train=False, task=task)
        names = list(shapes.TASKS[task])
        return Splits(train_set, val_set, len(names), names)
    classes = recipe["model"]["class_names"]
    source = load_source(data, classes, ("train", "val") if train else ("val",))
    for note in source.notes:
        log.info("%s", note)
    warn_problems(source)
    train_set = val_set = None
    if train:
        split = source.splits["train"]
        train_set = CocoDataset(
            split.image_root,
            split.coco,
            train=True,
            augment=data["augment"],
            seed=seed,
            name=split.source,
        )
    split = source.splits.get("val")
    if split is not None:
        val_set = CocoDataset(
            split.image_root,
            split.coco,
            train=False,
            min_size=data["eval_min_size"],
            max_size=data["eval_max_size"],
            name=split.source,
        )
    return Splits(train_set, val_set, source.num_classes, list(source.class_names))
