"""CVAT's "YOLO 1.1" export (darknet's layout), read as COCO-style dicts::

    ROOT/obj.data           classes = 3, train = data/train.txt, valid = data/valid.txt,
                            names = data/obj.names, backup = backup/ (one "key = value" a line)
    ROOT/obj.names          one class name a line; a class id is its line (from 0)
    ROOT/train.txt          one picture a line: data/obj_train_data/frame_000001.jpg
    ROOT/obj_train_data/    the pictures, each with its label file beside it (frame_000001.txt)

Paths in obj.data and the lists start with ``data/``: darknet's folder, where the export was
meant to be unpacked. They are read relative to ROOT, and where that does not exist, without
their ``data/`` (as CVAT's own importer does). Label lines are YOLO's (``yolo.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ddetr_cli.data.formats import DataSource, SplitData, categories_of
from ddetr_cli.data.yolo import read_labelled_pictures
from ddetr_cli.errors import DdetrError

# obj.data keys that are not split lists; every other key names one (CVAT writes train, valid).
_NOT_SPLITS = ("classes", "names", "backup", "eval")
_SPLIT_OF = {"train": "train", "valid": "val", "val": "val", "validation": "val", "test": "test"}


def read_obj_data(path: Path) -> dict[str, str]:
    """The ``key = value`` lines of an obj.data file (comments after ``#`` left out)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DdetrError(f"{path}: cannot read ({exc})") from None
    entries = {}
    for line in text.splitlines():
        key, sep, value = line.split("#", 1)[0].partition("=")
        if sep and key.strip() and value.strip():
            entries[key.strip()] = value.strip()
    return entries


def darknet_path(root: Path, written: str) -> Path:
    """A path as obj.data or a list writes it (``data/obj_train_data/a.jpg``): relative to
    ``root`` where that exists, else without its leading ``data/`` (whether that exists or
    not: it is where the export puts it)."""
    literal = Path(os.path.abspath(root / written))
    if not literal.exists() and written.replace("\\", "/").startswith("data/"):
        return Path(os.path.abspath(root / written[5:]))
    return literal


def _class_names(root: Path, entries: dict[str, str]) -> list[str]:
    names_file = darknet_path(root, entries.get("names", "obj.names"))
    if names_file.is_file():
        lines = names_file.read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()]
    count = entries.get("classes", "")
    if count.isdigit():
        return [f"class{i}" for i in range(int(count))]
    raise DdetrError(f"{root / 'obj.data'}: no class names ({names_file} not found)")


def _split_lists(root: Path, entries: dict[str, str]) -> tuple[dict[str, Path], list[str]]:
    """({split: its list file}, notes on lists that are not a split ddetr reads)."""
    lists, notes = {}, []
    for key, value in entries.items():
        if key in _NOT_SPLITS:
            continue
        split = _SPLIT_OF.get(key.lower())
        if split is None:
            notes.append(
                f"obj.data: '{key} = {value}' is not a split ddetr reads "
                "(train, valid, test): left out"
            )
            continue
        listing = darknet_path(root, value)
        if not listing.is_file():
            raise DdetrError(f"{root / 'obj.data'}: {key} list {value} not found ({listing})")
        lists[split] = listing
    return lists, notes


def load_darknet(root: Path, splits: tuple[str, ...]) -> DataSource:
    """The splits (those of ``splits`` obj.data lists) of CVAT's YOLO 1.1 export in ``root``."""
    entries = read_obj_data(root / "obj.data")
    names = _class_names(root, entries)
    lists, notes = _split_lists(root, entries)
    out: dict[str, SplitData] = {}
    for split in splits:
        listing = lists.get(split)
        if listing is None:
            continue
        written = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines()]
        pictures = [darknet_path(root, line) for line in written if line]
        folders = sorted({picture.parent for picture in pictures})
        data = read_labelled_pictures(
            split, pictures, lambda p: p.with_suffix(".txt"), folders, str(listing)
        )
        data.coco["categories"] = categories_of(names)
        out[split] = data
    return DataSource("yolo", root, out, names, notes, "CVAT YOLO 1.1")
