"""Write data as a COCO-format folder (the standard COCO layout): the built-in shapes, or any
format ``sources.load_source`` reads (``ddetr data convert``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ddetr_cli.data import shapes
from ddetr_cli.data.formats import DataSource, categories_of, coco_split_paths
from ddetr_cli.errors import DdetrError
from ddetr_cli.files import write_json


def write_shapes_coco(
    out_dir: str | Path,
    train: int,
    val: int,
    seed: int = 0,
    on_picture: Callable[[], None] | None = None,
    task: str = "shapes3",
) -> dict[str, Path]:
    """out_dir/{train2017,val2017}/NNNNNN.png (.jpg for the small task) and
    out_dir/annotations/instances_*2017.json: train pictures 0..train-1 of the split with
    ``seed``, val pictures 0..val-1 of the fixed val split, so ``data.root=out_dir`` trains on
    exactly the built-in data."""
    out_dir = Path(out_dir)
    written = {}
    for split, count, split_seed in (("train", train, seed), ("val", val, shapes.VAL_SEED)):
        if count == 0:
            continue
        folder, path = coco_split_paths(out_dir, split)
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            picture = shapes.task_picture(split_seed, i, task)
            name = f"{i:06d}{shapes.picture_suffix(task)}"
            options = {"quality": 92} if name.endswith(".jpg") else {}
            Image.fromarray(picture.image).save(folder / name, **options)
            image, boxes = shapes.coco_entries(picture, i + 1, name, len(annotations) + 1)
            images.append(image)
            annotations += boxes
            if on_picture:
                on_picture()
        coco = {"images": images, "annotations": annotations}
        write_json(coco | {"categories": shapes.coco_categories(task)}, path)
        written[split] = path
    return written


# --- any format as a COCO folder -------------------------------------------------------------

_COCO_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


def _place(picture: Path, target: Path, link: bool) -> None:
    if link:
        try:
            os.link(picture, target)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copy2(picture, target)


@dataclass
class SplitWritten:
    """What ``write_coco`` wrote of one split, against what the reader read."""

    annotations: Path
    pictures_read: int  # listed, including those missing or undecodable
    pictures: int
    boxes_read: int
    boxes: int


# Problems of a picture the data names (a list, a label file) but that a reader left out of
# its images: missing, undecodable, or a label file whose picture is not there (YOLO, VOC).
_PICTURE_PROBLEMS = ("missing picture", "undecodable picture", "orphan label")


def write_coco(
    source: DataSource,
    out_dir: str | Path,
    link: bool = True,
    on_picture: Callable[[], None] | None = None,
) -> dict[str, SplitWritten]:
    """Write every split of ``source`` as out_dir/{split}2017/ (pictures hard-linked, or
    copied where linking fails) and out_dir/annotations/instances_{split}2017.json, with the
    class indices as category ids. Annotations training would skip (unknown class, malformed)
    are left out; pictures that are missing are left out: the counts say so."""
    out_dir = Path(out_dir)
    written = {}
    categories = categories_of(source.class_names)
    known = {c["id"] for c in categories}
    for name, split in source.splits.items():
        folder, path = coco_split_paths(out_dir, name)
        folder.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        images, kept = [], set()
        for img in split.coco["images"]:
            picture = split.image_root / str(img["file_name"])
            if not picture.is_file():
                continue
            file_name = picture.name
            if file_name in used or (folder / file_name).exists():
                file_name = f"{img['id']:06d}_{picture.name}"  # the same name in two folders
            used.add(file_name)
            _place(picture, folder / file_name, link)
            if on_picture:
                on_picture()
            entry = {"id": img["id"], "file_name": file_name}
            entry.update({k: img[k] for k in ("width", "height") if k in img})
            images.append(entry)
            kept.add(img["id"])
        annotations = [
            {k: ann[k] for k in _COCO_KEYS if k in ann}
            for ann in split.coco["annotations"]
            if ann.get("image_id") in kept and ann.get("category_id") in known
        ]
        write_json({"images": images, "annotations": annotations, "categories": categories}, path)
        unlisted = sum(p.kind in _PICTURE_PROBLEMS for p in split.problems)
        written[name] = SplitWritten(
            path,
            len(split.coco["images"]) + unlisted,
            len(images),
            len(split.coco["annotations"]),
            len(annotations),
        )
    return written


def conversion_shortfall(source: DataSource, written: dict[str, SplitWritten]) -> str | None:
    """Why a conversion is not complete (nothing written, fewer pictures or boxes written than
    read, anything the reader skipped), in one line; None when it is."""
    pictures = sum(w.pictures for w in written.values())
    read = sum(w.pictures_read for w in written.values())
    boxes = sum(w.boxes for w in written.values())
    boxes_read = sum(w.boxes_read for w in written.values())
    counts = f"{pictures} of {read} pictures and {boxes} of {boxes_read} boxes"
    if pictures == 0:
        return f"wrote no picture ({counts}): nothing was converted"
    if pictures < read or boxes < boxes_read or source.problems:
        skipped = f"; {len(source.problems)} skipped (listed above)" if source.problems else ""
        return f"wrote {counts}{skipped}: the conversion is incomplete"
    return None


def earlier_shapes_set(out_dir: Path) -> list[Path]:
    """The split folders and annotation files of an earlier ``ddetr data shapes`` in out_dir."""
    found = [out_dir / f"{s}2017" for s in ("train", "val")]
    found += [out_dir / "annotations" / f"instances_{s}2017.json" for s in ("train", "val")]
    return [p for p in found if p.exists()]


def prepare_shapes_folder(out_dir: str | Path, force: bool) -> None:
    """Refuse a non-empty out_dir holding an earlier set (its pictures would mix with the new
    ones), unless ``force``: then remove the earlier split folders and annotation files."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DdetrError(f"{out_dir}: exists and is not a folder")
    earlier = earlier_shapes_set(out_dir) if out_dir.is_dir() else []
    if not earlier:
        return
    if not force:
        raise DdetrError(
            f"{out_dir}: holds an earlier data set ({earlier[0].name}); use --force to replace "
            "it, or another folder"
        )
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
