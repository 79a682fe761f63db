"""Datasets described by a recipe's ``data`` section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from ddetr_cli.data import shapes
from ddetr_cli.data.coco import CocoDataset
from ddetr_cli.data.dataset import DetectionDataset
from ddetr_cli.data.shapes_dataset import ShapesDataset
from ddetr_cli.errors import DdetrError


@dataclass
class Splits:
    train: DetectionDataset | None
    val: DetectionDataset | None
    val_coco: COCO | None
    num_classes: int  # the smallest class count the labels fit in (max category id + 1)
    class_names: list[str]  # one per class index; "N/A" where no category has that id


def coco_paths(data: dict[str, Any], split: str) -> tuple[str | None, str | None]:
    """(images folder, annotations file) of a split: explicit paths win over data.root's
    standard COCO layout (root/{split}2017, root/annotations/instances_{split}2017.json)."""
    images, annotations = data[split]["images"], data[split]["annotations"]
    if data["root"] is not None:
        root = Path(data["root"])
        images = images or str(root / f"{split}2017")
        annotations = annotations or str(root / "annotations" / f"instances_{split}2017.json")
    return images, annotations


def _names(coco: COCO, count: int) -> list[str]:
    by_id = {c["id"]: str(c.get("name", c["id"])) for c in coco.loadCats(coco.getCatIds())}
    return [by_id.get(i, "N/A") for i in range(count)]


def build_datasets(recipe: dict[str, Any], train: bool = True) -> Splits:
    """The training split (when ``train``) and the val split (if the recipe names one)."""
    data, seed = recipe["data"], recipe["train"]["seed"]
    if data["format"] == "shapes":
        cfg = data["shapes"]
        train_set = (
            ShapesDataset(cfg["seed"], cfg["train_images"], train=True, augment=data["augment"])
            if train
            else None
        )
        val_set = ShapesDataset(shapes.VAL_SEED, cfg["val_images"], train=False)
        return Splits(train_set, val_set, val_set.coco(), len(shapes.CLASS_NAMES),
                      list(shapes.CLASS_NAMES))  # fmt: skip
    train_set = val_set = None
    num_classes, names_from = 0, None
    if train:
        images, annotations = coco_paths(data, "train")
        if images is None or annotations is None:
            raise DdetrError(
                "no training data: set data.root (COCO layout) or data.train.images and "
                "data.train.annotations"
            )
        train_set = CocoDataset(images, annotations, train=True, augment=data["augment"],
                                seed=seed)  # fmt: skip
        num_classes, names_from = train_set.max_category + 1, train_set.coco
    images, annotations = coco_paths(data, "val")
    if images is not None and annotations is not None:
        val_set = CocoDataset(images, annotations, train=False, min_size=data["eval_min_size"],
                              max_size=data["eval_max_size"])  # fmt: skip
        if val_set.max_category + 1 > num_classes:
            num_classes, names_from = val_set.max_category + 1, val_set.coco
    elif (images is None) != (annotations is None):
        raise DdetrError("data.val needs both images and annotations (or neither)")
    names = _names(names_from, num_classes) if names_from is not None else []
    return Splits(train_set, val_set, val_set.coco if val_set else None, num_classes, names)
