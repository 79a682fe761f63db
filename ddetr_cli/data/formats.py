"""Your own data: what every format reader shares (the split and problem types, format
detection, class-index helpers). The readers are ``coco``, ``yolo`` and ``voc``;
``sources.load_source`` chooses among them.

Every format (COCO, Roboflow's COCO export, YOLO, Pascal VOC) becomes, per split, a
``SplitData``: a pictures folder and a COCO-style dict (images, annotations, categories) whose
``category_id`` is already the class index the model learns. One dataset class
(``CocoDataset``) then trains on any of them, and pycocotools evaluates any of them.

Class indices: YOLO's ids as they are; otherwise the recipe's ``model.class_names`` order when
it is set (by name), else COCO's category ids and VOC's names sorted alphabetically.

Reading does not stop at a bad label: each problem becomes a ``Problem`` naming its file, the
dataset skips what training cannot use, and ``ddetr data check`` lists them all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddetr_cli.errors import DdetrError

log = logging.getLogger(__name__)

# The file formats the readers take, and what a recipe's data.format may say: one of them, auto
# (data.root's layout decides, detect_format) or shapes (generated in memory, shapes.py).
FORMATS = ("coco", "yolo", "voc")
DATA_FORMATS = ("auto", *FORMATS, "shapes")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data, named by its file (and line, where there is one)."""

    file: str
    message: str
    kind: str  # missing picture, undecodable picture, orphan label, unparsable, class, box, ...

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class SplitData:
    """One split. ``coco["images"][i]["file_name"]`` is relative to ``image_root`` (or
    absolute); annotations may carry a ``source`` ("labels/a.txt:3") naming their origin."""

    name: str
    image_root: Path
    coco: dict[str, Any]
    source: str  # the annotations file or folder, for messages
    problems: list[Problem] = field(default_factory=list)


@dataclass
class DataSource:
    format: str  # coco, yolo, voc
    root: Path | None
    splits: dict[str, SplitData]
    class_names: list[str]  # one per class index; "N/A" where no class has that index
    notes: list[str] = field(default_factory=list)
    flavour: str = ""  # "Roboflow" for Roboflow's COCO export

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def problems(self) -> list[Problem]:
        return [p for split in self.splits.values() for p in split.problems]


# The folder of each split in the exports that keep one folder per split (Roboflow's COCO and
# VOC exports write valid/; others write val/).
SPLIT_FOLDERS = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}
_LAYOUTS = (
    "data.yaml (YOLO, Roboflow YOLO), obj.data (CVAT YOLO 1.1), Annotations/ and JPEGImages/ "
    "(Pascal VOC), annotations/ or train2017/ (COCO, mmdet), SPLIT/_annotations.coco.json "
    "(Roboflow COCO), SPLIT/*.xml (Roboflow VOC), SPLIT one of train, valid, val, test"
)


def coco_split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(pictures folder, annotations file) of ``split`` in the standard COCO layout, which
    ``ddetr data convert`` writes and COCO reading tries first: root/{split}2017/ and
    root/annotations/instances_{split}2017.json."""
    return root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"


def split_folders(root: Path, split: str) -> list[Path]:
    """The folders of ``root`` that may hold ``split`` in a folder-per-split export."""
    return [root / name for name in SPLIT_FOLDERS[split]]


def _has_split_files(root: Path, pattern: str) -> bool:
    folders = [f for split in SPLIT_FOLDERS for f in split_folders(root, split)]
    return any(folder.is_dir() and any(folder.glob(pattern)) for folder in folders)


def detect_format(root: str | Path) -> str:
    """coco, yolo or voc from the layout of ``root``; ``DdetrError`` saying what was looked
    for when none fits."""
    root = Path(root)
    if not root.is_dir():
        raise DdetrError(f"data.root: no such folder: {root} (set data.root=PATH)")
    if any((root / name).is_file() for name in ("data.yaml", "data.yml", "obj.data")):
        return "yolo"
    if (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir():
        return "voc"
    if (root / "annotations").is_dir() or any(
        coco_split_paths(root, split)[0].is_dir() for split in ("train", "val")
    ):
        return "coco"
    if _has_split_files(root, "_annotations.coco.json"):
        return "coco"  # Roboflow's COCO export
    if _has_split_files(root, "*.xml"):
        return "voc"  # Roboflow's VOC export: the pictures with an .xml beside each
    raise DdetrError(
        f"data.root {root}: unknown layout (looked for {_LAYOUTS}); set data.format, or "
        "data.train.* and data.val.* for COCO files elsewhere"
    )


def names_by_index(by_index: dict[int, str]) -> list[str]:
    """A list with one name per index 0..max, "N/A" in the gaps."""
    count = max(by_index, default=-1) + 1
    return [by_index.get(i, "N/A") for i in range(count)]


def index_by_name(class_names: list[str]) -> dict[str, int]:
    """Class index of each name (the first, where a name repeats, as "N/A" does in COCO's)."""
    out: dict[str, int] = {}
    for i, name in enumerate(class_names):
        out.setdefault(name, i)
    return out


def categories_of(class_names: list[str]) -> list[dict[str, Any]]:
    """COCO categories for class indices 0..n-1, leaving out the "N/A" gaps."""
    return [{"id": i, "name": n} for i, n in enumerate(class_names) if n != "N/A"]


def warn_problems(source: DataSource) -> None:
    """One warning per split and kind of problem (training), pointing at ddetr data check."""
    for split in source.splits.values():
        kinds: dict[str, int] = {}
        for p in split.problems:
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        if kinds:
            detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda x: -x[1]))
            log.warning("%s: %s (ddetr data check lists them)", split.source, detail)
