"""The class count and names a training run uses: the recipe's, or the data's where the recipe
says ``model.num_classes: null``."""

from __future__ import annotations

from typing import Any

from ddetr_cli.errors import DdetrError


def _data_classes(splits: Any) -> tuple[int, list[str]]:
    """(the class count the data needs, one name per class index), as the built datasets
    found them: the same numbers as ``ddetr_cli.data.formats.data_classes(recipe)``, without
    reading the annotations a second time."""
    return splits.num_classes, list(splits.class_names)


def resolve_classes(recipe: dict[str, Any], splits: Any) -> None:
    """Fill model.num_classes (when null) and model.class_names (when null) from the data, in
    place; refuse a class count the data's category ids do not fit in."""
    model = recipe["model"]
    needed, names = _data_classes(splits)
    if model["num_classes"] is None:
        if needed <= 0:
            raise DdetrError(
                "model.num_classes is null (from the data) but the data has no categories; "
                "set model.num_classes"
            )
        model["num_classes"] = needed
    elif needed > model["num_classes"]:
        raise DdetrError(
            f"the data uses category ids up to {needed - 1} but model.num_classes is "
            f"{model['num_classes']}; set model.num_classes={needed} (or null: from the data)"
        )
    if model["class_names"] is None and names:
        count = model["num_classes"]
        model["class_names"] = (names + ["N/A"] * count)[:count]
