"""Checkpoint files: ours and the official release's; inferring, loading and saving models.

Our format: {"format": "ddetr", "version", "model": state_dict, "recipe": resolved recipe,
...training state}. Official: {"model", "optimizer", "lr_scheduler", "epoch", "args":
argparse.Namespace}. A bare state dict is accepted too.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddetr_cli.errors import DdetrError
from ddetr_cli.io import atomic_write

FORMAT = "ddetr"
# Keys some official files carry from a FLOPs profiler; they are not weights.
_PROFILER_SUFFIXES = ("total_params", "total_ops")
# Official args that map one-to-one onto recipe model keys.
_ARGS_TO_MODEL = (
    "backbone", "dilation", "num_feature_levels", "hidden_dim", "nheads", "enc_layers",
    "dec_layers", "dim_feedforward", "dropout", "num_queries", "enc_n_points", "dec_n_points",
    "with_box_refine", "two_stage", "aux_loss",
)  # fmt: skip


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file into a dict with at least `model` (a state dict of tensors).

    Only our own types and argparse.Namespace are unpickled (weights_only=True).
    """
    path = Path(path)
    if not path.exists():
        raise DdetrError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise DdetrError(f"checkpoint {path} is a directory, expected a .pth file")
    if path.stat().st_size == 0:
        raise DdetrError(f"checkpoint {path} is empty")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DdetrError(f"{path} is not a readable checkpoint ({reason[:200]})") from exc
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


def _clean_state_dict(state_dict: dict[str, Any]) -> dict[str, Tensor]:
    cleaned = {}
    for key, value in state_dict.items():
        if key.endswith(_PROFILER_SUFFIXES) or not isinstance(value, Tensor):
            continue
        cleaned[key.removeprefix("module.")] = value  # DDP-wrapped saves
    return cleaned


def _count_indices(state_dict: dict[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _infer_backbone(state_dict: dict[str, Tensor]) -> str:
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in state_dict
    layer3_blocks = _count_indices(state_dict, "backbone.0.body.layer3.")
    names = {(True, 6): "resnet50", (True, 23): "resnet101", (False, 2): "resnet18"}
    return names.get((bottleneck, layer3_blocks), "resnet34" if not bottleneck else "resnet50")


def infer_model_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Recipe `model` values for a checkpoint without a stored recipe: the official `args`
    where present, the state dict's key layout and shapes otherwise."""
    sd = ckpt["model"]
    required = ("class_embed.0.weight", "transformer.level_embed")
    if any(k not in sd for k in required):
        raise DdetrError("checkpoint lacks class_embed.0.weight or transformer.level_embed")
    enc_ffn = sd.get("transformer.encoder.layers.0.linear1.weight")
    cfg: dict[str, Any] = {
        "backbone": _infer_backbone(sd),
        "num_classes": sd["class_embed.0.weight"].shape[0],
        "hidden_dim": sd["class_embed.0.weight"].shape[1],
        "num_feature_levels": sd["transformer.level_embed"].shape[0],
        "enc_layers": _count_indices(sd, "transformer.encoder.layers."),
        "dec_layers": _count_indices(sd, "transformer.decoder.layers."),
        "with_box_refine": any(k.startswith("transformer.decoder.bbox_embed.") for k in sd),
        "two_stage": "transformer.enc_output.weight" in sd,
    }
    if enc_ffn is not None:
        cfg["dim_feedforward"] = enc_ffn.shape[0]
    if "query_embed.weight" in sd:
        cfg["num_queries"] = sd["query_embed.weight"].shape[0]
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        cfg.update({k: getattr(args, k) for k in _ARGS_TO_MODEL if hasattr(args, k)})
    # Heads and points are folded together in the weights, (M*L*P, C): assume the recipe's
    # head count (8 unless the args say otherwise) and derive the points.
    heads = cfg.get("nheads", 8)
    for key, part in (
        ("enc_n_points", "encoder.layers.0.self_attn"),
        ("dec_n_points", "decoder.layers.0.cross_attn"),
    ):
        weights = sd.get(f"transformer.{part}.attention_weights.weight")
        if weights is not None and key not in cfg:
            points, rest = divmod(weights.shape[0], heads * cfg["num_feature_levels"])
            if rest == 0:
                cfg[key] = points
    return cfg


def recipe_for_checkpoint(
    ckpt: dict[str, Any], overrides: Sequence[str] = (), source: str = "checkpoint"
) -> dict[str, Any]:
    """The checkpoint's stored recipe, or one inferred from an official file, plus overrides."""
    from ddetr_cli.config import apply_overrides

    if isinstance(ckpt.get("recipe"), dict):
        return apply_overrides(copy.deepcopy(ckpt["recipe"]), overrides, source)
    recipe = apply_overrides({"model": infer_model_config(ckpt)}, overrides, source)
    if recipe["model"]["class_names"] is None and recipe["model"]["num_classes"] == 91:
        from ddetr_cli.coco_names import COCO_CLASS_NAMES

        # The official release was trained on COCO with raw category ids as classes.
        recipe["model"]["class_names"] = list(COCO_CLASS_NAMES)
    return recipe


def load_state_dict(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Strict load with one clear line when the architecture differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own and not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
        raise DdetrError(
            f"{source} does not fit this model architecture: {'; '.join(parts)}; "
            "pass the matching --recipe (or key=value overrides)"
        )
    model.load_state_dict(state_dict, strict=False)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint file's weights into an existing model (every key used, none missing)."""
    load_state_dict(model, read_checkpoint(path)["model"], str(path))
    return model


def load_model(
    weights: str | Path,
    recipe: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    overrides: Sequence[str] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint needs (from `recipe`, or the checkpoint's own / inferred
    recipe) and load its weights. Returns (model in eval mode on `device`, recipe)."""
    from ddetr_cli.config import apply_overrides
    from ddetr_cli.model import build_model

    ckpt = read_checkpoint(weights)
    if recipe is None:
        recipe = recipe_for_checkpoint(ckpt, overrides, f"checkpoint {weights}")
    elif overrides:
        recipe = apply_overrides(recipe, overrides, "recipe")
    recipe = copy.deepcopy(recipe)
    # The checkpoint supplies every weight: never fetch ImageNet weights for it.
    recipe["model"]["pretrained_backbone"] = False
    model = build_model(recipe)
    load_state_dict(model, ckpt["model"], str(weights))
    return model.to(device).eval(), recipe


def save_checkpoint(
    path: str | Path, model: nn.Module, recipe: dict[str, Any], **extra: Any
) -> Path:
    """Write {"format", "version", "model", "recipe", **extra} atomically: a crash mid-write
    leaves the previous file intact."""
    from ddetr_cli import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": __version__,
        "model": model.state_dict(),
        "recipe": recipe,
        **extra,
    }
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    return path
