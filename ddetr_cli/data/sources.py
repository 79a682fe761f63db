"""A recipe's data, whatever its format: the reader a data section needs, and its classes.

Kept apart from ``formats`` (which the readers import) so that the dispatch to the readers
never imports back into them.

Which data paths each format reads: ``coco`` data.root and the data.{train,val}.{images,
annotations} files (which win over data.root's); ``yolo`` and ``voc`` data.root alone (the
splits are in the data set's own files); ``shapes`` none. A path set for a format that does
not read it is an error naming the format in force, never silently ignored. (``data.shapes``
describes the generator; recipes built on a shapes recipe keep it when they read files, as
``ddetr train shapes data.format=coco data.root=DIR`` does, so it is not refused.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ddetr_cli.data.formats import DataSource, detect_format
from ddetr_cli.errors import DdetrError

_SPLIT_PATHS = tuple(
    f"{split}.{kind}" for split in ("train", "val") for kind in ("images", "annotations")
)
_PATHS_READ = {"coco": ("root", *_SPLIT_PATHS), "yolo": ("root",), "voc": ("root",), "shapes": ()}
_WHAT = {
    "shapes": "the built-in pictures are generated: no files",
    "yolo": "the splits are named in data.root's data.yaml or obj.data",
    "voc": "the splits are data.root's lists or split folders",
}


def _value(data: dict[str, Any], key: str) -> Any:
    split, _, kind = key.partition(".")
    return data[split][kind] if kind else data[key]


def refuse_unread_paths(data: dict[str, Any], fmt: str, found: bool = False) -> None:
    """``DdetrError`` when the data section sets a path that format ``fmt`` does not read.
    ``found``: ``fmt`` is what ``data.format: auto`` found in data.root."""
    unread = [
        k
        for k in ("root", *_SPLIT_PATHS)
        if k not in _PATHS_READ[fmt] and _value(data, k) is not None
    ]
    if not unread:
        return
    key = f"data.{unread[0]}"
    in_force = (
        f"data.root holds {fmt} data (data.format auto)" if found else f"data.format is {fmt}"
    )
    if fmt == "shapes":
        fix = "set data.format=auto (the layout of data.root decides)"
    else:
        fix = "leave data.root out to read COCO files" if found else "set data.format=coco"
    raise DdetrError(
        f"{key} is set ({_value(data, unread[0])}), but {in_force}, which does not read it "
        f"({_WHAT[fmt]}): {fix}, or leave {key} out"
    )


def _refuse_missing_paths(data: dict[str, Any], splits: tuple[str, ...]) -> None:
    """One line naming a data path that no longer exists and the override that fixes it."""
    keys = ["root", *(k for k in _SPLIT_PATHS if k.split(".")[0] in splits)]
    for key in keys:
        value = _value(data, key)
        if value is None:
            continue
        folder = key == "root" or key.endswith("images")
        exists = Path(value).is_dir() if folder else Path(value).is_file()
        if not exists:
            what = "folder" if folder else "file"
            raise DdetrError(
                f"data.{key}: no such {what}: {value} (moved? set data.{key}=PATH to where it "
                "is now)"
            )


def data_format(data: dict[str, Any], splits: tuple[str, ...] = ("train", "val")) -> str:
    """The format the data section reads (coco, yolo, voc, shapes): data.format, or what
    ``auto`` finds in data.root. Refuses paths that no longer exist or that the format does
    not read."""
    fmt = data["format"]
    if fmt == "shapes":
        refuse_unread_paths(data, fmt)
        return fmt
    _refuse_missing_paths(data, splits)
    explicit = any(_value(data, k) for k in _SPLIT_PATHS)
    if fmt == "auto":
        if data["root"] is not None:
            found = detect_format(data["root"])
            refuse_unread_paths(data, found, found=True)
            return found
        if explicit:
            return "coco"
        raise DdetrError(
            "no data: set data.root (a COCO, YOLO or VOC folder), data.train.images and "
            "data.train.annotations, or data.format=shapes"
        )
    refuse_unread_paths(data, fmt)
    if fmt != "coco" and data["root"] is None:
        raise DdetrError(f"data.format {fmt} needs data.root (the dataset folder)")
    return fmt


def load_source(
    data: dict[str, Any],
    class_names: list[str] | None = None,
    splits: tuple[str, ...] = ("train", "val"),
    require_train: bool = True,
) -> DataSource:
    """The splits (those of ``splits`` the data has) of a recipe's ``data`` section.

    ``class_names``: the recipe's ``model.class_names`` (class indices by name), or None.
    ``require_train``: a data set without a training split is an error (training); else
    (``ddetr data check``, ``convert``) it is read for what it has.
    """
    fmt = data_format(data, splits)
    if fmt == "shapes":
        raise DdetrError("data.format shapes is generated in memory: there are no files to read")
    root = Path(os.path.abspath(data["root"])) if data["root"] is not None else None
    if fmt == "coco":
        from ddetr_cli.data.coco import load_coco_source

        source = load_coco_source(data, class_names, splits)
    elif fmt == "yolo":
        from ddetr_cli.data.darknet import load_darknet
        from ddetr_cli.data.yolo import data_yaml, load_yolo

        darknet = data_yaml(root) is None and (root / "obj.data").is_file()
        source = load_darknet(root, splits) if darknet else load_yolo(root, splits)
    else:
        from ddetr_cli.data.voc import load_voc

        source = load_voc(root, class_names, splits)
    where = f"{source.root}" if source.root is not None else "the data.train/val paths"
    if require_train and "train" in splits and "train" not in source.splits:
        found = ", ".join(source.splits) or "no split"
        raise DdetrError(
            f"no training split in {where} ({fmt}; found: {found}): training needs one "
            "(`ddetr data check` reports what is there)"
        )
    if not require_train and not source.splits:
        raise DdetrError(f"no split ({', '.join(splits)}) found in {where} ({fmt})")
    return source


def data_classes(recipe: dict[str, Any]) -> tuple[int, list[str]]:
    """(class count, class names) the recipe's data needs: ``model.class_names`` when set;
    else the built-in task's names, YOLO's names, COCO's category ids (names by id, "N/A" in
    the gaps) or VOC's sorted names. Reads annotations only, never pictures."""
    names = recipe["model"]["class_names"]
    data = recipe["data"]
    if data["format"] == "shapes":
        refuse_unread_paths(data, "shapes")
    if names is not None:
        return len(names), list(names)
    if data["format"] == "shapes":
        from ddetr_cli.data import shapes

        names = list(shapes.TASKS[data["shapes"]["task"]])
        return len(names), names
    source = load_source(data, None)
    return source.num_classes, list(source.class_names)
