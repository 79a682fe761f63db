"""COCO-format detection datasets read with pycocotools (FIDELITY §5.2 target preparation).

Checked up front, with one warning per kind of problem: annotations with a malformed, zero or
negative size box or an unknown category are skipped; images whose file is missing are
skipped. Pictures that exist but cannot be decoded are found while training: each is replaced
by the next picture and reported (see ``DetectionDataset``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections import Counter
from pathlib import Path

import torch
from pycocotools.coco import COCO
from torch import Tensor

from ddetr_cli.data.dataset import DetectionDataset
from ddetr_cli.errors import DdetrError
from ddetr_cli.images import load_image

log = logging.getLogger(__name__)


def read_coco(annotations: str | Path) -> COCO:
    """pycocotools COCO from a JSON file, with one-line errors for unreadable files."""
    path = Path(annotations)
    if not path.is_file():
        raise DdetrError(f"annotations file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DdetrError(f"{path}: not a JSON annotations file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DdetrError(f"{path}: not COCO format (no 'images' list)")
    data.setdefault("annotations", [])
    data.setdefault("categories", [])
    for key in ("annotations", "categories"):
        if not isinstance(data[key], list):
            raise DdetrError(f"{path}: '{key}' must be a list")
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise DdetrError(f"{path}: malformed COCO entry (missing {exc})") from None
    return coco


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
        annotations: str | Path,
        train: bool,
        augment: str = "paper",
        min_size: int = 800,
        max_size: int = 1333,
        seed: int = 0,
    ) -> None:
        super().__init__(train, augment, min_size, max_size, seed)
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise DdetrError(f"images folder not found: {self.images_dir}")
        self.coco = read_coco(annotations)
        name = Path(annotations).name
        categories = set(self.coco.getCatIds())
        if any(not isinstance(c, int) or c < 0 for c in categories):
            raise DdetrError(f"{name}: category ids must be integers >= 0")
        self.max_category = max(categories, default=-1)
        problems: Counter[str] = Counter()
        self.targets: dict[int, tuple[Tensor, Tensor]] = {}
        for image_id in self.coco.getImgIds():
            boxes, labels = [], []
            for ann in self.coco.imgToAnns.get(image_id, []):
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
        ids, missing = [], 0
        for image_id in sorted(self.targets):
            if (self.images_dir / self.coco.imgs[image_id]["file_name"]).is_file():
                ids.append(image_id)
            else:
                missing += 1
        if missing:
            log.warning("%s: skipped %d images whose file is missing in %s", name, missing,
                        self.images_dir)  # fmt: skip
        if not ids:
            raise DdetrError(f"{name}: no images found in {self.images_dir}")
        self.missing_images = missing
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> int:
        return self.ids[index]

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image_id = self.ids[index]
        image = load_image(self.images_dir / self.coco.imgs[image_id]["file_name"])
        boxes, labels = self.targets[image_id]
        h, w = image.shape[-2:]
        # Clamp to the picture; boxes that become empty are dropped later.
        boxes = torch.stack(
            [boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
             boxes[:, 3].clamp(0, h)], dim=1,
        )  # fmt: skip
        return image, boxes, labels
