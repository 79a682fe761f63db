"""``ddetr data slice``: any data set ddetr reads, written as a COCO folder of tiles, so a model
can be trained on tiles of large pictures at their own resolution (and then run with
``--slice`` on the large pictures).

Each picture is cut with the grid sliced inference uses (``data.tiles.tile_grid``). A box
goes into a tile when at least ``min_visible`` of its area lies inside it, clipped to the tile;
the others are dropped from that tile. Tiles left without boxes are "empty": at most
``empty_ratio`` of them per tile with boxes are kept, chosen at random (``seed``), so the
tiles of sparse pictures do not drown the objects in background.

The output is the standard COCO layout ({split}2017/, annotations/instances_{split}2017.json),
with the class indices as category ids; each tile's image entry also names its ``source``
picture and its ``tile`` [x0, y0, x1, y1] there. It is written into a temporary folder that
becomes OUT_DIR only when complete.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ddetr_cli.data.formats import (
    DataSource,
    Problem,
    SplitData,
    categories_of,
    coco_split_paths,
)
from ddetr_cli.data.pictures import load_image, picture_size
from ddetr_cli.data.tiles import Tile, boxes_in_tile, check_tiling, tile_grid
from ddetr_cli.errors import DdetrError, UsageError
from ddetr_cli.files import atomic_folder, write_json


@dataclass
class SplitSliced:
    """What ``slice_dataset`` wrote of one split."""

    annotations: Path
    pictures_read: int
    pictures: int  # sliced (the others could not be read: see problems)
    tiles: int  # written
    tiles_with_boxes: int
    empty_dropped: int  # empty tiles left out (--empty-ratio)
    boxes_read: int
    boxes: int  # written: a box in the overlap of two tiles is written twice
    boxes_in_no_tile: int  # boxes no tile shows at --min-visible
    problems: list[Problem] = field(default_factory=list)


@dataclass
class _TilePlan:
    tile: Tile
    boxes: torch.Tensor  # clipped, in the tile's pixels
    annotations: list[dict[str, Any]]  # the source annotation of each box


@dataclass
class _PicturePlan:
    path: Path
    image: dict[str, Any]  # the source's image entry
    tiles: list[_TilePlan]


def check_slice_options(
    size: tuple[int, int], overlap: float, min_visible: float, empty_ratio: float
) -> None:
    """UsageError in one line for values that make no sense."""
    check_tiling(size, overlap, "--size")
    if not 0.0 <= min_visible <= 1.0:
        raise UsageError(f"--min-visible must be in [0, 1], got {min_visible:g}")
    if empty_ratio < 0:
        raise UsageError(f"--empty-ratio must be at least 0, got {empty_ratio:g}")


def _usable(ann: dict[str, Any], known: set[int]) -> bool:
    """An annotation training would use: a known class and a box of positive size."""
    bbox = ann.get("bbox")
    return (
        ann.get("category_id") in known
        and isinstance(bbox, list | tuple)
        and len(bbox) == 4
        and all(isinstance(v, int | float) for v in bbox)
        and bbox[2] > 0
        and bbox[3] > 0
    )


def _plan_picture(
    path: Path, image: dict[str, Any], annotations: list[dict[str, Any]], options: dict[str, Any]
) -> tuple[_PicturePlan, int]:
    """The tiles of one picture and the boxes of each; and how many boxes no tile shows."""
    width, height = picture_size(path)
    xywh = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float64).reshape(-1, 4)
    xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    shown = torch.zeros(len(annotations), dtype=torch.bool)
    tiles = []
    for tile in tile_grid(height, width, options["size"], options["overlap"]):
        boxes, index = boxes_in_tile(xyxy, tile, options["min_visible"])
        shown[index] = True
        tiles.append(_TilePlan(tile, boxes, [annotations[i] for i in index.tolist()]))
    return _PicturePlan(path, image, tiles), int((~shown).sum())


def _plan_split(
    split: SplitData, known: set[int], options: dict[str, Any]
) -> tuple[list[_PicturePlan], list[Problem], int, int]:
    """(a plan per readable picture, the pictures that could not be read, boxes read, boxes
    in no tile). Only picture headers are read here."""
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in split.coco["annotations"]:
        if _usable(ann, known):
            by_image.setdefault(ann.get("image_id"), []).append(ann)
    plans, problems, boxes_read, unshown = [], [], 0, 0
    for image in split.coco["images"]:
        path = split.image_root / str(image["file_name"])
        annotations = by_image.get(image["id"], [])
        boxes_read += len(annotations)
        try:
            plan, missed = _plan_picture(path, image, annotations, options)
        except DdetrError as exc:
            problems.append(Problem(str(path), str(exc).removeprefix(f"{path}: "), "picture"))
            continue
        plans.append(plan)
        unshown += missed
    return plans, problems, boxes_read, unshown


def _drop_empty_tiles(plans: list[_PicturePlan], ratio: float, seed: int) -> int:
    """Keep at most ``ratio`` empty tiles per tile with boxes, chosen at random; returns how
    many empty tiles were dropped."""
    empty = [
        (p, t)
        for p, plan in enumerate(plans)
        for t, tile in enumerate(plan.tiles)
        if not tile.annotations
    ]
    with_boxes = sum(len(plan.tiles) for plan in plans) - len(empty)
    keep = min(len(empty), int(ratio * with_boxes))
    kept = set(random.Random(seed).sample(empty, keep))
    for p, plan in enumerate(plans):
        plan.tiles = [
            tile for t, tile in enumerate(plan.tiles) if tile.annotations or (p, t) in kept
        ]
    return len(empty) - keep


def _tile_name(plan: _PicturePlan, tile: Tile, used: set[str]) -> str:
    """'<stem>_<x0>_<y0>.jpg' (.png unless the source is a JPEG); the source's image id in
    front when two source pictures share a stem."""
    suffix = ".jpg" if plan.path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    name = f"{plan.path.stem}_{tile.x0}_{tile.y0}{suffix}"
    if name.lower() in used:
        name = f"{plan.image['id']}_{name}"
    used.add(name.lower())
    return name


def _annotation(ann: dict[str, Any], box: list[float], ids: tuple[int, int]) -> dict[str, Any]:
    """A source annotation as seen in a tile: its clipped box, and its area scaled by the
    share of its box that is visible (COCO's area may be a segmentation's)."""
    x0, y0, x1, y1 = box
    w, h = ann["bbox"][2], ann["bbox"][3]
    visible = (x1 - x0) * (y1 - y0)
    area = float(ann.get("area", w * h)) * visible / (w * h)
    return {
        "id": ids[0],
        "image_id": ids[1],
        "category_id": ann["category_id"],
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": area,
        "iscrowd": int(ann.get("iscrowd", 0)),
    }


def _write_split(
    plans: list[_PicturePlan], folder: Path, on_picture: Callable[[], None] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Problem]]:
    """Decode each picture, write its tiles; (image entries, annotations, pictures that could
    not be decoded)."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations, problems, used = [], [], [], set()
    for plan in plans:
        if on_picture:
            on_picture()
        try:
            picture = load_image(plan.path).permute(1, 2, 0).numpy()
        except DdetrError as exc:
            problems.append(
                Problem(str(plan.path), str(exc).removeprefix(f"{plan.path}: "), "picture")
            )
            continue
        for item in plan.tiles:
            t = item.tile
            name = _tile_name(plan, t, used)
            crop = Image.fromarray(picture[t.y0 : t.y1, t.x0 : t.x1])
            crop.save(folder / name, **({"quality": 95} if name.endswith(".jpg") else {}))
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": name,
                    "width": t.width,
                    "height": t.height,
                    "source": str(plan.image["file_name"]),
                    "tile": list(t),
                }
            )
            for ann, box in zip(item.annotations, item.boxes.tolist(), strict=True):
                annotations.append(_annotation(ann, box, (len(annotations) + 1, image_id)))
    return images, annotations, problems


def slice_dataset(
    source: DataSource,
    out_dir: str | Path,
    size: tuple[int, int],
    overlap: float = 0.2,
    min_visible: float = 0.5,
    empty_ratio: float = 0.2,
    seed: int = 0,
    on_picture: Callable[[], None] | None = None,
) -> dict[str, SplitSliced]:
    """Write every split of ``source`` as tiles of ``size`` (height, width) into ``out_dir``
    (which must not exist or be empty); see the module's docstring. ``on_picture`` is called
    before each picture is cut. Writing no tile at all is a DdetrError, and writes nothing."""
    check_slice_options(size, overlap, min_visible, empty_ratio)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DdetrError(f"{out_dir}: exists and is not an empty folder")
    options = {"size": tuple(size), "overlap": overlap, "min_visible": min_visible}
    categories = categories_of(source.class_names)
    known = {c["id"] for c in categories}
    written = {}
    with atomic_folder(out_dir) as tmp:
        for name, split in source.splits.items():
            plans, problems, boxes_read, unshown = _plan_split(split, known, options)
            dropped = _drop_empty_tiles(plans, empty_ratio, seed)
            folder, annotations_path = coco_split_paths(tmp, name)
            images, annotations, failed = _write_split(plans, folder, on_picture)
            with_boxes = len({ann["image_id"] for ann in annotations})
            write_json(
                {"images": images, "annotations": annotations, "categories": categories},
                annotations_path,
            )
            written[name] = SplitSliced(
                coco_split_paths(out_dir, name)[1],
                len(split.coco["images"]),
                len(plans) - len(failed),
                len(images),
                with_boxes,
                dropped,
                boxes_read,
                len(annotations),
                unshown,
                problems + failed,
            )
        if not any(w.tiles for w in written.values()):  # leaves no folder behind
            problems = [str(p) for w in written.values() for p in w.problems]
            raise DdetrError("wrote no tile: " + (problems[0] if problems else "no pictures"))
    return written
