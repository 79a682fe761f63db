"""COCO-format detection datasets read with pycocotools (docs/design.md#coco-targets).

Also the COCO readers of ``data.root``: the standard layout (train2017/, val2017/,
annotations/instances_{train,val}2017.json), mmdetection's (annotations/instances_{train,val}.json
with the pictures in train/, val/ or images/{train,val}/) and Roboflow's export (train/,
valid/ or val/, test/, each holding _annotations.coco.json beside its pictures). Every other
format is converted to the same COCO-style dict (see ``formats.py``), so ``CocoDataset``
reads all of them.

Checked up front, with one warning per kind of problem: annotations with a malformed, zero or
negative size box or an unknown category are skipped; images whose file is missing are
skipped in training (evaluation keeps them). Pictures that cannot be decoded are found while
training: each is replaced by the next picture and reported; evaluation scores a missing or
undecodable picture as one with no detections and names it (see ``DetectionDataset``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ddetr_cli.data.dataset import DetectionDataset
from ddetr_cli.data.formats import (
    SPLITS,
    DataSource,
    Problem,
    SplitData,
    coco_split_paths,
    index_by_name,
    names_by_index,
    split_folders,
)
from ddetr_cli.data.pictures import load_image
from ddetr_cli.errors import DdetrError
from ddetr_cli.files import read_json

if TYPE_CHECKING:
    from pycocotools.coco import COCO

log = logging.getLogger(__name__)


def read_coco(annotations: str | Path) -> COCO:
    """pycocotools COCO from a JSON file, with one-line errors for unreadable files."""
    return coco_object(read_coco_dict(annotations), str(annotations))


def coco_object(data: dict[str, Any], name: str) -> COCO:
    """pycocotools COCO of an in-memory dict (no prints); ``name`` is used in errors."""
    from pycocotools.coco import COCO  # only here: the model, training steps and bench need none

    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise DdetrError(f"{name}: malformed COCO entry (missing {exc})") from None
    return coco


def read_coco_dict(annotations: str | Path) -> dict[str, Any]:
    """The checked JSON dict of a COCO annotations file (images, annotations, categories)."""
    path = Path(annotations)
    data = read_json(path, "annotations file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DdetrError(f"{path}: not COCO format (no 'images' list)")
    data.setdefault("annotations", [])
    data.setdefault("categories", [])
    for key in ("annotations", "categories"):
        if not isinstance(data[key], list):
            raise DdetrError(f"{path}: '{key}' must be a list")
    for key in ("images", "annotations", "categories"):
        for entry in data[key]:
            if not isinstance(entry, dict) or "id" not in entry:
                raise DdetrError(f"{path}: malformed COCO entry in '{key}' (missing 'id')")
    return data


def _box_problem(ann: dict, categories: set[int]) -> str | None:
    bbox = ann.get("bbox")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return "malformed bbox"
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox):
        return "malformed bbox"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return "zero or negative size"
    if ann.get("category_id") not in categories:
        return "unknown category"
    return None


class CocoDataset(DetectionDataset):
    """Images and boxes of a COCO annotations file; labels are the category ids as they are."""

    def __init__(
        self,
        images_dir: str | Path,
        annotations: str | Path | dict[str, Any],
        train: bool,
        augment: str = "paper",
        min_size: int = 800,
        max_size: int = 1333,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        """``annotations``: a COCO JSON file or an in-memory COCO-style dict (any format
        converted by ``sources.load_source``); ``name`` names it in messages."""
        super().__init__(train, augment, min_size, max_size, seed)
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise DdetrError(f"images folder not found: {self.images_dir}")
        if isinstance(annotations, dict):
            name = name or "annotations"
            self._coco = coco_object(annotations, name)
        else:
            self._coco = read_coco(annotations)
            name = name or Path(annotations).name
        categories = set(self._coco.getCatIds())
        if any(not isinstance(c, int) or c < 0 for c in categories):
            raise DdetrError(f"{name}: category ids must be integers >= 0")
        self.max_category = max(categories, default=-1)
        problems: Counter[str] = Counter()
        self.targets: dict[int, tuple[Tensor, Tensor]] = {}
        for image_id in self._coco.getImgIds():
            boxes, labels = [], []
            for ann in self._coco.imgToAnns.get(image_id, []):
                if ann.get("iscrowd", 0):
                    continue  # crowd regions are not trained on (official)
                problem = _box_problem(ann, categories)
                if problem:
                    problems[problem] += 1
                    continue
                x, y, w, h = ann["bbox"]
                boxes.append([x, y, x + w, y + h])
                labels.append(ann["category_id"])
            self.targets[image_id] = (
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                torch.tensor(labels, dtype=torch.int64),
            )
        if problems:
            detail = ", ".join(f"{n} {what}" for what, n in problems.most_common())
            log.warning("%s: skipped %d annotations (%s)", name, problems.total(), detail)
        self.skipped_annotations = problems.total()
        present = [
            i
            for i in sorted(self.targets)
            if (self.images_dir / self._coco.imgs[i]["file_name"]).is_file()
        ]
        if not present:
            raise DdetrError(f"{name}: no images found in {self.images_dir}")
        missing = len(self.targets) - len(present)
        # Evaluation keeps them: each is named and scored as a picture with no detections.
        ids = present if train else sorted(self.targets)
        if missing and train:
            log.warning(
                "%s: skipped %d images whose file is missing in %s", name, missing, self.images_dir
            )
        self.missing_images = missing
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> int:
        return self.ids[index]

    def coco_ground_truth(self) -> COCO:
        return self._coco

    def box_count(self) -> int:
        return len(self._coco.getAnnIds(imgIds=self.ids))

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image_id = self.ids[index]
        image = load_image(self.images_dir / self._coco.imgs[image_id]["file_name"])
        boxes, labels = self.targets[image_id]
        h, w = image.shape[-2:]
        # Clamp to the picture; boxes that become empty are dropped later.
        boxes = torch.stack(
            [
                boxes[:, 0].clamp(0, w),
                boxes[:, 1].clamp(0, h),
                boxes[:, 2].clamp(0, w),
                boxes[:, 3].clamp(0, h),
            ],
            dim=1,
        )
        return image, boxes, labels


# --- data.root readers: the standard layout, Roboflow's export, explicit paths ---------------


def drop_unused_supercategory(data: dict[str, Any]) -> str | None:
    """Roboflow exports a category 0 named after the dataset that no annotation uses and that
    every other category has as its supercategory. Drop it (it would be a class never seen);
    returns a note, or None when the dict has no such category."""
    cats = data["categories"]
    zero = [c for c in cats if c.get("id") == 0]
    others = [c for c in cats if c.get("id") != 0]
    if len(zero) != 1 or not others:
        return None
    name = zero[0].get("name")
    if any(a.get("category_id") == 0 for a in data["annotations"]):
        return None
    if not all(c.get("supercategory") == name for c in others):
        return None
    data["categories"] = others
    return f"dropped category 0 '{name}': Roboflow's dataset-name supercategory, unused"


_SplitFiles = tuple[list[Path], Path]  # (candidate pictures folders, annotations file)


def _roboflow_files(root: Path) -> dict[str, _SplitFiles]:
    """Roboflow's export: one folder per split with _annotations.coco.json beside the pictures."""
    found = {}
    for split in SPLITS:
        for folder in split_folders(root, split):
            if (folder / "_annotations.coco.json").is_file():
                found[split] = ([folder], folder / "_annotations.coco.json")
                break
    return found


def _layout_files(root: Path, split: str) -> _SplitFiles | None:
    """data.root's COCO layouts: the standard one (train2017/) and mmdetection's (train/ or
    images/train/, annotations/instances_train.json)."""
    pictures, annotations = coco_split_paths(root, split)
    folders = [pictures, root / split, root / "images" / pictures.name, root / "images" / split]
    for candidate in (annotations, root / "annotations" / f"instances_{split}.json"):
        if candidate.is_file():
            return folders, candidate
    return None


def _coco_split_files(
    data: dict[str, Any], root: Path | None
) -> tuple[str, dict[str, _SplitFiles]]:
    """(flavour, {split: (candidate pictures folders, annotations file)}) of the COCO data a
    recipe names: explicit data.{split} paths win over data.root's layout."""
    if root is not None and not (root / "annotations").is_dir():
        found = _roboflow_files(root)
        if found:
            return "Roboflow", found
    out = {}
    for split in SPLITS:
        images = annotations = None
        if split in ("train", "val"):
            images, annotations = data[split]["images"], data[split]["annotations"]
        layout = _layout_files(root, split) if root is not None else None
        if images is None and annotations is None and layout is None:
            continue  # no such split
        if layout is None and (images is None or annotations is None):
            raise DdetrError(f"data.{split} needs both images and annotations (or data.root)")
        folders = [Path(images)] if images is not None else layout[0]
        out[split] = (folders, Path(annotations) if annotations is not None else layout[1])
    return "", out


def _pictures_folder(candidates: list[Path], coco: dict[str, Any], root: Path | None) -> Path:
    """The folder a split's file names are relative to: the candidate holding its first
    picture (data.root itself, when the names include the folder), else the first that exists."""
    first = str(coco["images"][0].get("file_name", "")) if coco["images"] else ""
    if first:
        for folder in [*candidates, *([root] if root is not None else [])]:
            if (folder / first).is_file():
                return folder
    return next((folder for folder in candidates if folder.is_dir()), candidates[0])


def _remap_by_name(data: dict[str, Any], class_names: list[str], source: str) -> list[Problem]:
    """Make category ids the index of each category's name in ``class_names``; annotations of
    a category not in the list keep an unknown id (skipped by training, reported)."""
    wanted = index_by_name(class_names)
    new_id, problems = {}, []
    for cat in data["categories"]:
        if cat.get("name") in wanted:
            new_id[cat["id"]] = wanted[cat["name"]]
    missing = [c.get("name") for c in data["categories"] if c["id"] not in new_id]
    if data["categories"] and not new_id:
        raise DdetrError(
            f"{source}: none of its category names ({', '.join(map(str, missing[:5]))}) is in "
            "model.class_names"
        )
    for name in missing:
        problems.append(Problem(source, f"category '{name}' is not in model.class_names", "class"))
    old_names = {c["id"]: c.get("name") for c in data["categories"]}
    for ann in data["annotations"]:
        cat = ann.get("category_id")
        if cat not in new_id:
            ann["class_name"] = old_names.get(cat, cat)  # named in data check's message
        ann["category_id"] = new_id.get(cat, -1)
    data["categories"] = [
        {**c, "id": new_id[c["id"]]} for c in data["categories"] if c["id"] in new_id
    ]
    return problems


def load_coco_source(
    data: dict[str, Any], class_names: list[str] | None, splits: tuple[str, ...]
) -> DataSource:
    """COCO data: data.root in the standard, mmdetection or Roboflow layout, or explicit
    data.{split} paths (which win over data.root's). Splits that are not there are left out."""
    root = Path(os.path.abspath(data["root"])) if data["root"] is not None else None
    flavour, files = _coco_split_files(data, root)
    out, notes, by_id = {}, [], {}
    for split in splits:
        if split not in files:
            continue
        folders, annotations = files[split]
        coco = read_coco_dict(annotations)
        images = _pictures_folder(folders, coco, root)
        note = drop_unused_supercategory(coco)
        if note and note not in notes:
            notes.append(note)
        problems = _remap_by_name(coco, class_names, str(annotations)) if class_names else []
        for cat in coco["categories"]:
            if not isinstance(cat["id"], int) or cat["id"] < 0:
                raise DdetrError(f"{annotations}: category ids must be integers >= 0")
            by_id.setdefault(cat["id"], str(cat.get("name", cat["id"])))
        out[split] = SplitData(split, images, coco, str(annotations), problems)
    names = list(class_names) if class_names else names_by_index(by_id)
    return DataSource("coco", root, out, names, notes, flavour)
