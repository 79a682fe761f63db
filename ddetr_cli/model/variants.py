"""What the model can be built as, without importing torch (recipes list these choices)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The torchvision ResNets the backbone builds (model/backbone.py); "convnet" is the small one.
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


def describe_model(recipe: Mapping[str, Any]) -> str:
    """A recipe's model in a few words, e.g. 'resnet50 DC5, 1 level, box refine + two-stage'."""
    m = recipe["model"]
    kind = "plain"
    if m["two_stage"]:
        kind = "box refine + two-stage"
    elif m["with_box_refine"]:
        kind = "box refine"
    dc5 = " DC5" if m["dilation"] else ""
    levels = m["num_feature_levels"]
    return f"{m['backbone']}{dc5}, {levels} level{'s' if levels > 1 else ''}, {kind}"
