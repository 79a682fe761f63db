"""PyTorch checkpoint files (.pth): ddetr's own and the official release's, read safely.

Ours: {"format": "ddetr", "version", "recipe_schema", "model": state_dict, "recipe": resolved
recipe, ...training state}. Official: {"model", "optimizer", "lr_scheduler", "epoch", "args":
argparse.Namespace}. A bare state dict is accepted too. Files come from strangers: they are read
with weights_only=True (tensors, plain containers and argparse.Namespace only).
"""

from __future__ import annotations

import argparse
import copy
import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddetr_cli.data.class_names import class_names
from ddetr_cli.errors import DdetrError, one_line
from ddetr_cli.files import atomic_write
from ddetr_cli.recipe import RECIPE_SCHEMA
from ddetr_cli.weights.official import infer_model_config
from ddetr_cli.weights.sniff import sniff

FORMAT = "ddetr"
# Keys some official files carry from a FLOPs profiler; they are not weights.
_PROFILER_SUFFIXES = ("total_params", "total_ops")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file into a dict with at least `model` (a state dict of tensors).

    Only our own types and argparse.Namespace are unpickled (weights_only=True).
    """
    path = Path(path)
    if not path.exists():
        raise DdetrError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise DdetrError(f"checkpoint {path} is a directory, expected a .pth file")
    kind = sniff(path)
    if kind.reader != "checkpoint":  # torch.load fails on these with a traceback or a riddle
        raise DdetrError(f"{path} is {kind.what}, not a PyTorch checkpoint")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes for foreign files
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DdetrError(f"{path} is not a checkpoint ddetr reads: {_unsafe_reason(exc)}") from None
    except Exception as exc:  # truncated or corrupt data: torch's errors vary (IndexError, ...)
        raise DdetrError(
            f"{path} is not a readable checkpoint ({kind.what}: {one_line(exc)})"
        ) from None
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        ckpt = dict(data)
    elif isinstance(data, dict) and data and all(isinstance(v, Tensor) for v in data.values()):
        ckpt = {"model": data}
    else:
        raise DdetrError(f"{path} is not a Deformable DETR checkpoint (no 'model' state dict)")
    ckpt["model"] = _clean_state_dict(ckpt["model"])
    if not any(k.startswith("transformer.") for k in ckpt["model"]):
        raise DdetrError(f"{path} is not a Deformable DETR checkpoint (no transformer weights)")
    return ckpt


def _unsafe_reason(exc: pickle.UnpicklingError) -> str:
    """What a file that only full unpickling could read holds, without passing on torch's hint
    to retry with weights_only=False: a stranger's pickle may run any code."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        return (
            f"it holds a Python object of type {found.group(1)}, not only tensors; ddetr never "
            "unpickles such objects (they can run code). Save the weights alone "
            "(torch.save(model.state_dict(), path)) or convert it where it was made"
        )
    return (
        "it is a pickle, but not a tensor checkpoint torch reads safely; ddetr never unpickles "
        "further (a pickle can run code)"
    )


def _clean_state_dict(state_dict: dict[str, Any]) -> dict[str, Tensor]:
    cleaned = {}
    for key, value in state_dict.items():
        if key.endswith(_PROFILER_SUFFIXES) or not isinstance(value, Tensor):
            continue
        cleaned[key.removeprefix("module.")] = value  # DDP-wrapped saves
    return cleaned


def recipe_for_checkpoint(
    ckpt: dict[str, Any], overrides: Sequence[str] = (), source: str = "checkpoint"
) -> dict[str, Any]:
    """The checkpoint's stored recipe, or one inferred from an official file, plus overrides."""
    from ddetr_cli.recipe import apply_overrides, migrate_recipe

    if isinstance(ckpt.get("recipe"), dict):
        recipe = migrate_recipe(copy.deepcopy(ckpt["recipe"]), ckpt.get("recipe_schema", 1))
        return apply_overrides(recipe, overrides, source)
    recipe = apply_overrides({"model": infer_model_config(ckpt)}, overrides, source)
    # The official release was trained on COCO with raw category ids as classes.
    names = class_names(recipe)
    recipe["model"]["class_names"] = list(names) if names is not None else None
    return recipe


def save_checkpoint(
    path: str | Path, model: nn.Module, recipe: dict[str, Any], **extra: Any
) -> Path:
    """Write {"format", "version", "recipe_schema", "model", "recipe", **extra} atomically: a
    crash mid-write leaves the previous file intact."""
    from ddetr_cli import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": __version__,
        "recipe_schema": RECIPE_SCHEMA,
        "model": model.state_dict(),
        "recipe": recipe,
        **extra,
    }
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    return path
