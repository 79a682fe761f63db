"""Small data sets in the layouts people download them in (Roboflow's YOLO, COCO and VOC
exports, CVAT's YOLO 1.1, mmdetection's COCO, ultralytics' YOLO), written from the shapes
generator: 3 train, 2 val and 1 test picture of 128x128 with their boxes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from PIL import Image

from ddetr_cli.data import shapes

NAMES = list(shapes.CLASS_NAMES)
COUNTS = {"train": 3, "val": 2, "test": 1}
_SEEDS = {"train": 0, "val": shapes.VAL_SEED, "test": 7}
SIZE = shapes.IMAGE_SIZE


def pictures(split: str) -> list[shapes.ShapesPicture]:
    return [shapes.make_picture(_SEEDS[split], i) for i in range(COUNTS[split])]


def box_count(split: str) -> int:
    return sum(len(p.boxes) for p in pictures(split))


def _save(picture: shapes.ShapesPicture, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture.image).save(path)


def _yolo_labels(picture: shapes.ShapesPicture, path: Path) -> None:
    lines = []
    for (x0, y0, x1, y1), label in zip(picture.boxes, picture.labels, strict=True):
        cx, cy = (x0 + x1) / 2 / SIZE, (y0 + y1) / 2 / SIZE
        lines.append(f"{label} {cx:.6f} {cy:.6f} {(x1 - x0) / SIZE:.6f} {(y1 - y0) / SIZE:.6f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _voc_xml(picture: shapes.ShapesPicture, filename: str) -> str:
    size = f"<size><width>{SIZE}</width><height>{SIZE}</height><depth>3</depth></size>"
    parts = [f"<annotation><filename>{filename}</filename>", size]
    for (x0, y0, x1, y1), label in zip(picture.boxes, picture.labels, strict=True):
        parts.append(
            f"<object><name>{NAMES[label]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{x0 + 1:g}</xmin><ymin>{y0 + 1:g}</ymin><xmax>{x1:g}</xmax>"
            f"<ymax>{y1:g}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _coco(split: str, file_names: list[str]) -> dict:
    return shapes.coco_dict(_SEEDS[split], COUNTS[split], file_names)


def ultralytics_yolo(root: Path, path_line: str | None = None) -> Path:
    """ROOT/data.yaml, images/{train,val}/, labels/{train,val}/; ``path:`` as given (None: no
    such line)."""
    for split in ("train", "val"):
        for i, picture in enumerate(pictures(split)):
            _save(picture, root / "images" / split / f"{i:03d}.png")
            _yolo_labels(picture, root / "labels" / split / f"{i:03d}.txt")
    spec = {"train": "images/train", "val": "images/val", "names": NAMES}
    if path_line is not None:
        spec = {"path": path_line, **spec}
    (root / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def roboflow_yolo(root: Path) -> Path:
    """Roboflow's YOLO export: data.yaml naming ../train/images, ../valid/images, ../test/images."""
    for split, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
        for i, picture in enumerate(pictures(split)):
            _save(picture, root / folder / "images" / f"{split}_{i}.jpg")
            _yolo_labels(picture, root / folder / "labels" / f"{split}_{i}.txt")
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
        f"nc: {len(NAMES)}\nnames: {NAMES}\n\nroboflow:\n  workspace: someone\n  version: 1\n"
    )
    return root


def roboflow_coco(root: Path, val_folder: str = "valid") -> Path:
    """Roboflow's COCO export: SPLIT/_annotations.coco.json beside the pictures, with its
    dataset-name category 0."""
    for split, folder in (("train", "train"), ("val", val_folder), ("test", "test")):
        names = [f"{split}_{i}.jpg" for i in range(COUNTS[split])]
        for name, picture in zip(names, pictures(split), strict=True):
            _save(picture, root / folder / name)
        data = _coco(split, names)
        for ann in data["annotations"]:
            ann["category_id"] += 1
        data["categories"] = [{"id": 0, "name": "shapes", "supercategory": "none"}] + [
            {"id": i + 1, "name": n, "supercategory": "shapes"} for i, n in enumerate(NAMES)
        ]
        (root / folder / "_annotations.coco.json").write_text(json.dumps(data))
    return root


def roboflow_voc(root: Path) -> Path:
    """Roboflow's Pascal VOC export: flat split folders, an .xml beside each picture."""
    for split, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
        for i, picture in enumerate(pictures(split)):
            name = f"{split}_{i}.jpg"
            _save(picture, root / folder / name)
            (root / folder / f"{split}_{i}.xml").write_text(_voc_xml(picture, name))
    (root / "README.roboflow.txt").write_text("exported from roboflow\n")
    return root


def cvat_yolo(root: Path) -> Path:
    """CVAT's "YOLO 1.1" export: obj.data, obj.names, train.txt and valid.txt listing
    data/obj_SUBSET_data/NAME.jpg, the label file beside each picture."""
    for split, subset in (("train", "train"), ("val", "valid")):
        listed = []
        for i, picture in enumerate(pictures(split)):
            _save(picture, root / f"obj_{subset}_data" / f"frame_{i:06d}.jpg")
            _yolo_labels(picture, root / f"obj_{subset}_data" / f"frame_{i:06d}.txt")
            listed.append(f"data/obj_{subset}_data/frame_{i:06d}.jpg")
        (root / f"{subset}.txt").write_text("\n".join(listed) + "\n")
    (root / "obj.names").write_text("\n".join(NAMES) + "\n")
    (root / "obj.data").write_text(
        f"classes = {len(NAMES)}\ntrain = data/train.txt\nvalid = data/valid.txt\n"
        "names = data/obj.names\nbackup = backup/\n"
    )
    return root


def mmdet_coco(root: Path, pictures_folder: str = "{split}") -> Path:
    """mmdetection's COCO layout: annotations/instances_{train,val}.json, the pictures in
    ``pictures_folder`` ("{split}" or "images/{split}")."""
    for split in ("train", "val"):
        names = [f"{i:04d}.png" for i in range(COUNTS[split])]
        for name, picture in zip(names, pictures(split), strict=True):
            _save(picture, root / pictures_folder.format(split=split) / name)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(_coco(split, names))
        )
    return root
