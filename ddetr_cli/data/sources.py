"""A recipe's data, whatever its format: the reader a data section needs, and its classes.

Kept apart from ``formats`` (which the readers import) so that the dispatch to the readers
never imports back into them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddetr_cli.data.formats import FORMATS, DataSource, detect_format
from ddetr_cli.errors import DdetrError


def load_source(
    data: dict[str, Any],
    class_names: list[str] | None = None,
    splits: tuple[str, ...] = ("train", "val"),
) -> DataSource:
    """The splits (those of ``splits`` the data has) of a recipe's ``data`` section.

    ``class_names``: the recipe's ``model.class_names`` (class indices by name), or None.
    """
    fmt = data["format"]
    root = Path(data["root"]) if data["root"] is not None else None
    explicit = any(data[s]["images"] or data[s]["annotations"] for s in ("train", "val"))
    if fmt == "shapes":
        raise DdetrError("data.format shapes is generated in memory: there are no files to read")
    if fmt == "auto":
        if root is not None:
            fmt = detect_format(root)
        elif explicit:
            fmt = "coco"
        else:
            raise DdetrError(
                "no data: set data.root (a COCO, YOLO or VOC folder), data.train.images and "
                "data.train.annotations, or data.format=shapes"
            )
    if fmt != "coco" and root is None:
        raise DdetrError(f"data.format {fmt} needs data.root (the dataset folder)")
    if fmt == "coco":
        from ddetr_cli.data.coco import load_coco_source

        return load_coco_source(data, class_names, splits)
    if fmt == "yolo":
        from ddetr_cli.data.yolo import load_yolo

        return load_yolo(root, splits)
    if fmt == "voc":
        from ddetr_cli.data.voc import load_voc

        return load_voc(root, class_names, splits)
    raise DdetrError(f"data.format must be one of auto, {', '.join(FORMATS)}, shapes; got {fmt}")


def data_classes(recipe: dict[str, Any]) -> tuple[int, list[str]]:
    """(class count, class names) the recipe's data needs: ``model.class_names`` when set;
    else the built-in task's names, YOLO's names, COCO's category ids (names by id, "N/A" in
    the gaps) or VOC's sorted names. Reads annotations only, never pictures."""
    names = recipe["model"]["class_names"]
    if names is not None:
        return len(names), list(names)
    data = recipe["data"]
    if data["format"] == "shapes":
        from ddetr_cli.data import shapes

        names = list(shapes.TASKS[data["shapes"]["task"]])
        return len(names), names
    source = load_source(data, None)
    return source.num_classes, list(source.class_names)
