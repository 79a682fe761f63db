"""``ddetr data check``: what a dataset holds and everything training would skip or refuse.

The report gives the format found, then per split the pictures, the boxes, the boxes per class
and COCO's small / medium / large counts (box area under 32², under 96², the rest), and then
every problem on one line naming its file: a missing or undecodable picture, a label file
without a picture, an unparsable line, a class out of range, a box of zero size or outside
the picture, a duplicate file name. Any problem makes the check fail (exit status 1).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ddetr_cli.data.formats import DataSource, Problem, SplitData
from ddetr_cli.data.pictures import load_image
from ddetr_cli.data.sources import load_source
from ddetr_cli.errors import DdetrError

SMALL, MEDIUM = 32**2, 96**2  # COCO's area ranges
_EDGE_TOLERANCE = 1.0  # pixels a box may stick out of its picture (rounding in the labels)


@dataclass
class SplitReport:
    name: str
    source: str
    pictures: int = 0
    boxes: int = 0
    ignored: int = 0  # crowd / VOC difficult boxes (kept for evaluation only)
    per_class: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=lambda: {"small": 0, "medium": 0, "large": 0})


@dataclass
class CheckReport:
    format: str
    root: str | None
    class_names: list[str]
    splits: list[SplitReport]
    problems: list[Problem]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "root": self.root,
            "ok": self.ok,
            "class_names": self.class_names,
            "splits": [asdict(s) for s in self.splits],
            "problems": [
                {"file": p.file, "kind": p.kind, "message": p.message} for p in self.problems
            ],
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        """The report as plain text lines."""
        fmt = self.format + (f" ({self.root})" if self.root else "")
        out = [f"format: {fmt}", f"classes: {len(self.class_names)}"]
        for s in self.splits:
            out.append(
                f"{s.name}: {s.pictures} pictures, {s.boxes} boxes"
                + (f" (+{s.ignored} ignored)" if s.ignored else "")
                + f"; small {s.sizes['small']}, medium {s.sizes['medium']}, "
                f"large {s.sizes['large']}"
            )
            if s.per_class:
                out.append("  " + ", ".join(f"{k} {v}" for k, v in s.per_class.items()))
        out.extend(f"note: {n}" for n in self.notes)
        out.extend(str(p) for p in self.problems)
        out.append("ok" if self.ok else f"{len(self.problems)} problems")
        return out


def _box_problem(bbox: Any, width: int, height: int) -> str | None:
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return "malformed bbox"
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox):
        return "malformed bbox"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"box of zero size ({w:g} x {h:g})"
    if width > 0 and height > 0:
        tol = _EDGE_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            return (
                f"box outside the picture: x {x:g}..{x + w:g}, y {y:g}..{y + h:g} in a "
                f"{width}x{height} picture"
            )
    return None


def check_split(split: SplitData, class_names: list[str], decode: bool = True) -> SplitReport:
    """Counts of a split; appends the problems it finds to ``split.problems``."""
    report = SplitReport(split.name, split.source)
    coco = split.coco
    known = {c["id"] for c in coco["categories"]}
    images = {img["id"]: img for img in coco["images"]}
    where_image = {i: img.get("label_file") or split.source for i, img in images.items()}
    bad_images: set[int] = set()
    by_name: dict[str, list[int]] = {}
    for img in coco["images"]:
        path = split.image_root / str(img.get("file_name", ""))
        by_name.setdefault(str(path), []).append(img["id"])
        if not path.is_file():
            split.problems.append(Problem(str(path), "missing picture", "missing picture"))
            bad_images.add(img["id"])
            continue
        if decode:
            try:
                picture = load_image(path)
            except DdetrError as exc:
                message = str(exc).removeprefix(f"{path}: ")
                split.problems.append(Problem(str(path), message, "undecodable picture"))
                bad_images.add(img["id"])
                continue
            h, w = picture.shape[-2:]
            stated = (img.get("width"), img.get("height"))
            if stated != (None, None) and stated != (w, h):
                split.problems.append(
                    Problem(
                        where_image[img["id"]],
                        f"size {stated[0]}x{stated[1]} in the labels but the picture is {w}x{h}",
                        "size",
                    )
                )
    for path, ids in by_name.items():
        if len(ids) > 1:
            split.problems.append(
                Problem(
                    path,
                    f"duplicate file name: {len(ids)} images (ids {', '.join(map(str, ids[:5]))})",
                    "duplicate",
                )
            )
    report.pictures = len(images) - len(bad_images)
    per_class: Counter[int] = Counter()
    for ann in coco["annotations"]:
        img = images.get(ann.get("image_id"))
        where = ann.get("source") or f"{split.source} (annotation {ann.get('id')})"
        if img is None:
            split.problems.append(
                Problem(where, f"unknown image id {ann.get('image_id')}", "unparsable")
            )
            continue
        if img["id"] in bad_images:
            continue
        problem = _box_problem(ann.get("bbox"), img.get("width", 0), img.get("height", 0))
        cat = ann.get("category_id")
        if problem is None and cat not in known:
            label = ann.get("class_name") or cat
            count = len(class_names)
            if not isinstance(label, int):
                problem = f"class '{label}' is not in the class list"
            elif 0 <= label < count:
                problem = f"category id {label} is not one of the categories"
            else:
                problem = f"class {label} out of range (0..{count - 1})"
            kind = "class"
        else:
            kind = "unparsable" if problem == "malformed bbox" else "box"
        if problem is not None:
            split.problems.append(Problem(where, problem, kind))
            continue
        if ann.get("iscrowd", 0):
            report.ignored += 1
            continue
        report.boxes += 1
        per_class[cat] += 1
        area = ann["bbox"][2] * ann["bbox"][3]
        size = "small" if area < SMALL else "medium" if area < MEDIUM else "large"
        report.sizes[size] += 1
    report.per_class = {
        (class_names[c] if 0 <= c < len(class_names) else str(c)): n
        for c, n in sorted(per_class.items())
    }
    return report


# What a missing split means, said in the report (neither is a problem: a data set may be
# meant for evaluation only, and training without val is allowed).
_MISSING_SPLIT = {
    "train": "no train split: this data can be evaluated on, not trained on",
    "val": "no val split: training would run without validation (no val AP, no "
    "checkpoint_best.pth)",
}


def check_source(source: DataSource, decode: bool = True) -> CheckReport:
    reports = [check_split(split, source.class_names, decode) for split in source.splits.values()]
    fmt = source.format + (f" ({source.flavour})" if source.flavour else "")
    notes = list(source.notes)
    notes += [note for split, note in _MISSING_SPLIT.items() if split not in source.splits]
    return CheckReport(
        fmt,
        str(source.root) if source.root else None,
        source.class_names,
        reports,
        source.problems,
        notes,
    )


def check_data(recipe: dict[str, Any], decode: bool = True) -> CheckReport:
    """Check every split (train, val, test) the recipe's data has; ``decode`` opens each
    picture."""
    source = load_source(
        recipe["data"],
        recipe["model"]["class_names"],
        ("train", "val", "test"),
        require_train=False,
    )
    return check_source(source, decode)


def recipe_for(target: str | Path, overrides: list[str]) -> dict[str, Any]:
    """The recipe ``ddetr data check/convert`` works on: a recipe file, or a data folder
    (the defaults with data.root=DIR)."""
    from ddetr_cli.recipe import load_recipe

    path = Path(target)
    if path.is_dir():
        return load_recipe(None, [f"data.root={path}", *overrides])
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_recipe(path, overrides)
    raise DdetrError(f"{target}: neither a data folder nor a recipe file")
