"""Pascal VOC data, read as COCO-style dicts. The VOCdevkit layout::

    ROOT/Annotations/ID.xml           one per picture: filename, size, object/name, bndbox
    ROOT/JPEGImages/ID.jpg            the picture the XML's filename names (else ID.*)
    ROOT/ImageSets/Main/train.txt     one ID a line; val.txt, test.txt likewise

or Roboflow's export, flat: ROOT/train/, ROOT/valid/ (or val/), ROOT/test/, each holding the
pictures with an ID.xml beside each ID.jpg.

Boxes marked ``difficult`` are kept as crowd boxes (iscrowd=1): evaluation ignores them and
training drops them, as COCO's crowd regions. Class indices: the order of the recipe's
``model.class_names`` when set, else the object names of all XML files sorted alphabetically.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ddetr_cli.data.formats import (
    DataSource,
    Problem,
    SplitData,
    categories_of,
    index_by_name,
    split_folders,
)
from ddetr_cli.data.pictures import IMAGE_SUFFIXES, picture_size
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


def _picture_of(folder: Path, stem: str, filename: str) -> Path:
    """The picture of an annotation: folder/<filename>, else folder/<stem>.<any>."""
    if filename and (folder / filename).is_file():
        return folder / filename
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return folder / (filename or f"{stem}.jpg")


def _split_ids(root: Path, split: str) -> list[str] | None:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        return None
    # A line may carry a second column (per-class lists: "ID 1"); the ID comes first.
    return [
        line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _class_names(parsed: dict[Path, Any], class_names: list[str] | None) -> list[str]:
    if class_names:
        return list(class_names)
    return sorted(
        {o[0] for p in parsed.values() if isinstance(p, dict) for o in p["objects"] if o[0]}
    )


def load_voc(root: Path, class_names: list[str] | None, splits: tuple[str, ...]) -> DataSource:
    """The splits (those of ``splits`` there are) of VOC data in ``root``, either layout."""
    if not (root / "Annotations").is_dir():
        return _load_flat(root, class_names, splits)
    parsed = {p: parse_xml(p) for p in sorted((root / "Annotations").glob("*.xml"))}
    notes = []
    lists = {split: _split_ids(root, split) for split in splits}
    if all(ids is None for ids in lists.values()) and "train" in splits:
        lists["train"] = sorted(p.stem for p in parsed)
        notes.append("no ImageSets/Main/train.txt: every annotation is in the train split")
    names = _class_names(parsed, class_names)
    out = {}
    for split, ids in lists.items():
        if ids is None:
            continue
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        xmls, problems = _listed_xmls(root / "Annotations", ids, listing)
        out[split] = _read_split(
            split, xmls, parsed, root / "JPEGImages", str(listing), index_by_name(names), problems
        )
        out[split].coco["categories"] = categories_of(names)
    return DataSource("voc", root, out, names, notes)


def _load_flat(root: Path, class_names: list[str] | None, splits: tuple[str, ...]) -> DataSource:
    """Roboflow's VOC export: split folders holding the pictures with an .xml beside each."""
    folders = {}
    for split in splits:
        found = [f for f in split_folders(root, split) if f.is_dir() and any(f.glob("*.xml"))]
        if found:
            folders[split] = found[0]
    parsed = {p: parse_xml(p) for f in folders.values() for p in sorted(f.glob("*.xml"))}
    names = _class_names(parsed, class_names)
    out = {}
    for split, folder in folders.items():
        xmls = sorted(folder.glob("*.xml"))
        out[split] = _read_split(split, xmls, parsed, folder, str(folder), index_by_name(names), [])
        out[split].coco["categories"] = categories_of(names)
    return DataSource("voc", root, out, names, [], "Roboflow")


def _listed_xmls(folder: Path, ids: list[str], listing: Path) -> tuple[list[Path], list[Problem]]:
    """The annotation files a split list names, and the problems of the list itself."""
    xmls, problems, seen = [], [], set()
    for stem in ids:
        xml = folder / f"{stem}.xml"
        if stem in seen:
            problems.append(Problem(str(listing), f"'{stem}' is listed twice", "duplicate"))
        elif not xml.is_file():
            problems.append(
                Problem(
                    str(listing), f"'{stem}' has no {xml.name} in {folder.name}/", "missing label"
                )
            )
        else:
            xmls.append(xml)
        seen.add(stem)
    return xmls, problems


def _read_split(
    split: str,
    xmls: list[Path],
    parsed: dict[Path, Any],
    pictures: Path,
    source: str,
    index: dict[str, int],
    problems: list[Problem],
) -> SplitData:
    """One split: the annotation files ``xmls`` (parsed), their pictures in ``pictures``."""
    images: list[dict] = []
    annotations: list[dict] = []
    for xml in xmls:
        info = parsed[xml]
        if isinstance(info, str):
            problems.append(Problem(str(xml), info, "unparsable"))
            continue
        picture = _picture_of(pictures, xml.stem, info["filename"])
        if not picture.is_file():
            problems.append(
                Problem(
                    str(xml),
                    f"label file without a picture ({picture.name} not in {pictures.name}/)",
                    "orphan label",
                )
            )
            continue
        width, height = info["width"], info["height"]
        if width <= 0 or height <= 0:  # no <size>: read it from the picture
            try:
                width, height = picture_size(picture)
            except DdetrError as exc:
                problems.append(
                    Problem(
                        str(picture), str(exc).removeprefix(f"{picture}: "), "undecodable picture"
                    )
                )
                continue
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": picture.name,
                "width": width,
                "height": height,
                "label_file": str(xml),
            }
        )
        annotations.extend(
            _boxes(xml, info["objects"], image_id, len(annotations), index, problems)
        )
    coco = {"images": images, "annotations": annotations, "categories": []}
    return SplitData(split, pictures, coco, source, problems)


def _boxes(
    xml: Path,
    objects: list,
    image_id: int,
    first: int,
    index: dict[str, int],
    problems: list[Problem],
) -> list[dict]:
    """The COCO annotations of one picture's objects (ids after ``first``)."""
    out = []
    for number, (name, difficult, coords) in enumerate(objects, start=1):
        where = f"{xml} (object {number})"
        if isinstance(coords, str):
            problems.append(Problem(where, coords, "unparsable"))
            continue
        # VOC pixel coordinates are 1-based and inclusive: the box covers pixels xmin..xmax.
        # As the common tools do (detectron2, mmdetection), the 0-based box is
        # (xmin - 1, ymin - 1) to (xmax, ymax): same width, shifted by one pixel.
        x0, y0, x1, y1 = coords[0] - 1, coords[1] - 1, coords[2], coords[3]
        out.append(
            {
                "id": first + len(out) + 1,
                "image_id": image_id,
                "category_id": index.get(name, -1),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": max(0.0, x1 - x0) * max(0.0, y1 - y0),
                "iscrowd": int(difficult),
                "source": where,
                "class_name": name,
            }
        )
    return out
