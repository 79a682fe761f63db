"""Pascal VOC data (the VOCdevkit layout), read as COCO-style dicts.

    ROOT/Annotations/ID.xml           one per picture: filename, size, object/name, bndbox
    ROOT/JPEGImages/ID.jpg            the picture the XML's filename names (else ID.*)
    ROOT/ImageSets/Main/train.txt     one ID a line; val.txt, test.txt likewise

Boxes marked ``difficult`` are kept as crowd boxes (iscrowd=1): evaluation ignores them and
training drops them, as COCO's crowd regions. Class indices: the order of the recipe's
``model.class_names`` when set, else the object names of all XML files sorted alphabetically.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ddetr_cli.data.formats import (
    PICTURE_SUFFIXES,
    DataSource,
    Problem,
    SplitData,
    categories_of,
    index_by_name,
    picture_size,
)
from ddetr_cli.errors import DdetrError


def parse_xml(path: Path) -> dict[str, Any] | str:
    """{filename, width, height, objects: [(name, difficult, [xmin, ymin, xmax, ymax] | why)]}
    of a VOC annotation file, or why it cannot be read."""
    try:
        tree = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        return f"not a readable XML file ({exc})"
    size = tree.find("size")
    try:
        width = int(float(size.findtext("width"))) if size is not None else 0
        height = int(float(size.findtext("height"))) if size is not None else 0
    except (TypeError, ValueError):
        width = height = 0
    objects = []
    for obj in tree.iter("object"):
        name = (obj.findtext("name") or "").strip()
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
        box = obj.find("bndbox")
        try:
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            coords = f"object '{name}': bndbox needs numbers xmin, ymin, xmax, ymax"
        if not name:
            coords = "object without a name"
        objects.append((name, difficult, coords))
    filename = (tree.findtext("filename") or "").strip()
    return {"filename": filename, "width": width, "height": height, "objects": objects}


def _picture_of(root: Path, stem: str, filename: str) -> Path:
    """The picture of an annotation: JPEGImages/<filename>, else JPEGImages/<stem>.<any>."""
    folder = root / "JPEGImages"
    if filename and (folder / filename).is_file():
        return folder / filename
    for suffix in PICTURE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return folder / (filename or f"{stem}.jpg")


def _split_ids(root: Path, split: str) -> list[str] | None:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        return None
    # A line may carry a second column (per-class lists: "ID 1"); the ID comes first.
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]  # fmt: skip


def load_voc(root: Path, class_names: list[str] | None, splits: tuple[str, ...]) -> DataSource:
    annotations_dir = root / "Annotations"
    parsed = {p.stem: parse_xml(p) for p in sorted(annotations_dir.glob("*.xml"))}
    notes = []
    lists = {split: _split_ids(root, split) for split in splits}
    if lists.get("train") is None and "train" in splits:
        if any(ids is not None for ids in lists.values()):
            raise DdetrError(f"{root}: ImageSets/Main/train.txt not found")
        lists["train"] = sorted(parsed)
        notes.append("no ImageSets/Main/train.txt: every annotation is in the train split")
    if class_names:
        names = list(class_names)
    else:
        names = sorted({o[0] for p in parsed.values() if isinstance(p, dict)
                        for o in p["objects"] if o[0]})  # fmt: skip
    index = index_by_name(names)
    out = {}
    for split, ids in lists.items():
        if ids is None:
            continue
        out[split] = _read_split(root, split, ids, parsed, index)
        out[split].coco["categories"] = categories_of(names)
    return DataSource("voc", root, out, names, notes)


def _read_split(
    root: Path, split: str, ids: list[str], parsed: dict[str, Any], index: dict[str, int]
) -> SplitData:
    images: list[dict] = []
    annotations: list[dict] = []
    problems: list[Problem] = []
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    seen: set[str] = set()
    for stem in ids:
        xml = root / "Annotations" / f"{stem}.xml"
        if stem in seen:
            problems.append(Problem(str(listing), f"'{stem}' is listed twice", "duplicate"))
            continue
        seen.add(stem)
        info = parsed.get(stem)
        if info is None:
            problems.append(Problem(str(listing), f"'{stem}' has no {xml.name} in Annotations/",
                                    "missing label"))  # fmt: skip
            continue
        if isinstance(info, str):
            problems.append(Problem(str(xml), info, "unparsable"))
            continue
        picture = _picture_of(root, stem, info["filename"])
        if not picture.is_file():
            problems.append(Problem(str(xml), f"label file without a picture ({picture.name} "
                                    "not in JPEGImages/)", "orphan label"))  # fmt: skip
            continue
        width, height = info["width"], info["height"]
        if width <= 0 or height <= 0:  # no <size>: read it from the picture
            try:
                width, height = picture_size(picture)
            except DdetrError as exc:
                problems.append(Problem(str(picture), str(exc).removeprefix(f"{picture}: "),
                                        "undecodable picture"))  # fmt: skip
                continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": picture.name, "width": width,
                       "height": height, "label_file": str(xml)})  # fmt: skip
        for number, (name, difficult, coords) in enumerate(info["objects"], start=1):
            where = f"{xml} (object {number})"
            if isinstance(coords, str):
                problems.append(Problem(where, coords, "unparsable"))
                continue
            # VOC pixel coordinates are 1-based and inclusive: the box covers pixels xmin..xmax.
            # As the common tools do (detectron2, mmdetection), the 0-based box is
            # (xmin - 1, ymin - 1) to (xmax, ymax): same width, shifted by one pixel.
            x0, y0, x1, y1 = coords[0] - 1, coords[1] - 1, coords[2], coords[3]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": index.get(name, -1), "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": max(0.0, x1 - x0) * max(0.0, y1 - y0), "iscrowd": int(difficult),
                "source": where, "class_name": name,
            })  # fmt: skip
    coco = {"images": images, "annotations": annotations, "categories": []}
    return SplitData(split, root / "JPEGImages", coco, str(listing), problems)
