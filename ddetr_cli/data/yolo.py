"""YOLO data in the ultralytics layout, read as COCO-style dicts.

``data.yaml`` names the splits and the classes::

    path: .            # optional; the dataset folder (default: the folder of data.yaml)
    train: images/train    # a folder of pictures, a .txt list of pictures, or a list of those
    val: images/val
    names: [cat, dog]  # or {0: cat, 1: dog}

Split paths are relative to the dataset folder. Roboflow's export writes ``train:
../train/images`` beside ``train/images/``: as ultralytics does, a path starting with ``../``
that does not exist is taken without its ``../`` (so, inside the dataset folder).

A picture's labels are in the file found by replacing the last ``/images/`` of its path by
``/labels/`` and its suffix by ``.txt``: one ``class cx cy w h`` line per box, normalised to
0..1 (a longer line is a polygon, ``class x1 y1 x2 y2 ...``, and its box is taken). A picture
without a label file has no boxes. Class indices are YOLO's ids.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ddetr_cli.data.formats import (
    DataSource,
    Problem,
    SplitData,
    categories_of,
)
from ddetr_cli.data.pictures import picture_size, pictures_in
from ddetr_cli.errors import DdetrError

_SPLIT_KEYS = {"train": "train", "val": "val", "test": "test"}


def data_yaml(root: Path) -> Path | None:
    """The data.yaml (or data.yml) of a YOLO dataset folder, if it has one."""
    return next((root / n for n in ("data.yaml", "data.yml") if (root / n).is_file()), None)


def read_data_yaml(root: Path) -> tuple[Path, dict[str, Any]]:
    """(dataset folder, the parsed data.yaml) of a YOLO dataset folder; the dataset folder is
    ``path:`` (absolute, or relative to data.yaml's folder), else data.yaml's folder."""
    path = data_yaml(root) or root / "data.yaml"
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DdetrError(f"{path}: cannot read ({exc})") from None
    if not isinstance(spec, dict):
        raise DdetrError(f"{path}: expected a mapping with train, val and names")
    base = spec.get("path")
    folder = path.parent / str(base) if base else path.parent
    return Path(os.path.abspath(folder)), spec


def class_names_of(spec: dict[str, Any], where: str) -> list[str]:
    names = spec.get("names")
    if isinstance(names, dict):
        names = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in names.items()}
        if not all(isinstance(k, int) and k >= 0 for k in names):
            raise DdetrError(f"{where}: names keys must be class ids 0, 1, ...")
        count = max(names) + 1 if names else 0
        return [str(names.get(i, "N/A")) for i in range(count)]
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(spec.get("nc"), int):
        return [f"class{i}" for i in range(spec["nc"])]
    raise DdetrError(f"{where}: 'names' must be a list or a mapping of class id to name")


def label_path(picture: Path) -> Path:
    """The label file of a picture: the last /images/ of its path becomes /labels/, .txt."""
    parts = list(picture.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def split_path(folder: Path, entry: str) -> Path | None:
    """A data.yaml split entry as an existing path: relative to the dataset folder, and where
    that does not exist and the entry starts with ``../``, without it (Roboflow's exports, read
    as ultralytics reads them). None when neither exists."""
    literal = Path(os.path.abspath(folder / entry))
    if literal.exists():
        return literal
    if entry.startswith("../"):
        inside = Path(os.path.abspath(folder / entry[3:]))
        if inside.exists():
            return inside
    return None


def read_picture_list(listing: Path) -> list[Path]:
    """The pictures a .txt list names, one a line; relative lines are relative to the list's
    folder."""
    pictures = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        if line.strip():
            pictures.append(Path(os.path.abspath(listing.parent / line.strip())))
    return pictures


def _split_pictures(folder: Path, entry: Any, where: str) -> tuple[list[Path], list[Path]]:
    """(pictures, folders of pictures) a split's entry names."""
    entries = entry if isinstance(entry, list) else [entry]
    pictures, folders = [], []
    for item in entries:
        path = split_path(folder, str(item))
        if path is not None and path.is_dir():
            pictures.extend(pictures_in(path))
            folders.append(path)
        elif path is not None and path.suffix == ".txt":
            pictures.extend(read_picture_list(path))
        else:
            looked = [os.path.abspath(folder / str(item))]
            if str(item).startswith("../"):
                looked.append(os.path.abspath(folder / str(item)[3:]))
            raise DdetrError(
                f"{where}: split '{item}' not found (looked for {' and '.join(looked)})"
            )
    return pictures, folders


def parse_label_line(line: str) -> tuple[int, list[float]] | str:
    """(class id, [cx, cy, w, h]) of a label line, or why it cannot be read."""
    fields = line.split()
    try:
        cls_value = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return "not numbers"
    if not cls_value.is_integer():
        return f"class id {fields[0]} is not an integer"
    if not all(math.isfinite(v) for v in values):
        return "not finite numbers"
    if len(values) == 4:
        return int(cls_value), values
    if len(values) >= 6 and len(values) % 2 == 0:  # a polygon: its box
        xs, ys = values[0::2], values[1::2]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        return int(cls_value), [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]
    return f"expected 'class cx cy w h', got {len(fields)} values"


def read_labelled_pictures(
    name: str,
    pictures: list[Path],
    label_of: Callable[[Path], Path],
    label_folders: list[Path],
    where: str,
) -> SplitData:
    """A split of YOLO-labelled pictures: ``label_of(picture)`` is its label file (a picture
    without one has no boxes); a label file in ``label_folders`` that no picture uses is
    reported."""
    images: list[dict] = []
    annotations: list[dict] = []
    problems: list[Problem] = []
    used_labels: set[Path] = set()
    for picture in pictures:
        labels = label_of(picture)
        try:
            width, height = picture_size(picture)
        except DdetrError as exc:
            if picture.exists():
                reason = str(exc).removeprefix(f"{picture}: ")
                problems.append(Problem(str(picture), reason, "undecodable picture"))
            else:
                problems.append(Problem(str(picture), "missing picture", "missing picture"))
            used_labels.add(labels)
            continue
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": str(picture),
                "width": width,
                "height": height,
                "label_file": str(labels),
            }
        )
        used_labels.add(labels)
        if not labels.is_file():
            continue  # no label file: a picture without boxes
        try:
            text = labels.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(labels), f"cannot read ({exc})", "unparsable"))
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            parsed = parse_label_line(line)
            where_line = f"{labels}:{number}"
            if isinstance(parsed, str):
                problems.append(
                    Problem(
                        where_line, f"unparsable line ({parsed}): {line.strip()!r}", "unparsable"
                    )
                )
                continue
            cls, (cx, cy, w, h) = parsed
            x0, y0 = (cx - w / 2) * width, (cy - h / 2) * height
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls,  # out of range: an unknown category, skipped
                    "bbox": [x0, y0, w * width, h * height],
                    "area": w * width * h * height,
                    "iscrowd": 0,
                    "source": where_line,
                }
            )
    for labels_dir in label_folders:
        if labels_dir.is_dir():
            for orphan in sorted(set(labels_dir.rglob("*.txt")) - used_labels):
                problems.append(
                    Problem(str(orphan), "label file without a picture", "orphan label")
                )
    coco = {"images": images, "annotations": annotations, "categories": []}
    return SplitData(name, Path("/"), coco, where, problems)


def load_yolo(root: Path, splits: tuple[str, ...]) -> DataSource:
    """YOLO data in data.root as its data.yaml (ultralytics', Roboflow's export) names it."""
    root = Path(os.path.abspath(root))
    folder, spec = read_data_yaml(root)
    where = str(data_yaml(root) or root / "data.yaml")
    names = class_names_of(spec, where)
    out = {}
    for split in splits:
        entry = spec.get(_SPLIT_KEYS[split])
        if entry in (None, "", []):
            continue
        source = f"{where} ({split})"
        pictures, folders = _split_pictures(folder, entry, source)
        label_folders = [label_path(f / "x.png").parent for f in folders]
        data = read_labelled_pictures(split, pictures, label_path, label_folders, source)
        data.coco["categories"] = categories_of(names)
        out[split] = data
    return DataSource("yolo", root, out, names)
