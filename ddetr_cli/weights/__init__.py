"""Weights in every format ddetr reads, behind one `load_model`.

`--weights` may name:
- a ddetr checkpoint or an official release `.pth` (`weights.checkpoint`, `weights.official`);
- a run folder (its `checkpoint_best.pth`, else `checkpoint_last.pth`);
- a `.safetensors` file written by `ddetr convert` (`weights.safetensors_file`);
- a Hugging Face transformers folder, or a Hub model id (`weights.hf`);
- an ONNX file written by `ddetr export` (`export.runtime`), run with onnxruntime.

Every reader but ONNX gives a "checkpoint dict": {"model": state dict in ddetr's key names,
"recipe": a (partial) recipe or absent, "args": official argparse args or absent}. The model is
then built from a recipe and the state dict loaded strictly.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddetr_cli.errors import DdetrError
from ddetr_cli.weights.checkpoint import (
    read_checkpoint,
    recipe_for_checkpoint,
    save_checkpoint,
)
from ddetr_cli.weights.sniff import WEIGHT_SUFFIXES, WEIGHTS_TAKES, sniff

__all__ = [
    "is_hub_id",
    "load_model",
    "load_state_dict",
    "load_weights",
    "model_from_checkpoint",
    "read_checkpoint",
    "read_weights",
    "resolve_model",
    "resolve_weights_path",
    "save_checkpoint",
    "weights_format",
]

log = logging.getLogger(__name__)

RUN_CHECKPOINTS = ("checkpoint_best.pth", "checkpoint_last.pth")
# owner/name, as the Hugging Face Hub spells model ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str | Path) -> bool:
    """True for a name that is not a local file or folder and reads as a Hub model id
    (owner/name). A name with a weights suffix (.pth, .onnx, ...) or starting with `.`, `/` or
    `~` is a local path, never a Hub id."""
    text = str(name)
    return (
        not Path(text).exists()
        and not text.startswith((".", "/", "~"))
        and Path(text).suffix.lower() not in WEIGHT_SUFFIXES
        and _HUB_ID.match(text) is not None
    )


def weights_format(path: str | Path) -> str:
    """What `path` names: 'run', 'hf', 'hub', 'onnx', 'safetensors' or 'checkpoint' (files by
    their content, whatever their suffix). A missing local path, or a file no reader takes
    (text, an empty file, unknown bytes), is a DdetrError saying so in one line."""
    if is_hub_id(path):
        return "hub"
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        if any((path / name).is_file() for name in RUN_CHECKPOINTS):
            return "run"
        raise DdetrError(
            f"{path} is a folder but neither a run folder ({' or '.join(RUN_CHECKPOINTS)}) nor a "
            "transformers model folder (config.json)"
        )
    if not path.exists():
        raise DdetrError(f"{path}: no such file")
    if not path.is_file():
        raise DdetrError(f"{path} is not a regular file; {WEIGHTS_TAKES}")
    kind = sniff(path)
    if kind.reader is None:
        raise DdetrError(f"{path} is {kind.what}, not weights; {WEIGHTS_TAKES}")
    return kind.reader


def resolve_weights_path(path: str | Path) -> str | Path:
    """A run folder means its best checkpoint (else its last); anything else is itself, as
    given (`./owner/name` must not become the Hub id `owner/name`)."""
    if Path(path).is_dir() and weights_format(path) == "run":
        for name in RUN_CHECKPOINTS:
            if (Path(path) / name).is_file():
                if name != RUN_CHECKPOINTS[0]:
                    log.warning("%s has no %s; using %s", path, RUN_CHECKPOINTS[0], name)
                return Path(path) / name
    return path


def read_weights(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of any weights format but ONNX (see the module docstring)."""
    kind = weights_format(path)
    if kind == "onnx":
        raise DdetrError(f"{path}: an ONNX file holds no trainable weights; use its source")
    if kind in ("hf", "hub"):
        from ddetr_cli.weights import hf

        folder = hf.download(str(path)) if kind == "hub" else Path(path)
        return hf.read_hf_folder(folder)
    if kind == "safetensors":
        from ddetr_cli.weights import safetensors_file

        return safetensors_file.read_safetensors(path)
    return read_checkpoint(resolve_weights_path(path))


MISMATCH_HINT = "pass the matching --recipe (or key=value overrides)"


def load_state_dict(
    model: nn.Module, state_dict: dict[str, Tensor], source: str, hint: str = MISMATCH_HINT
) -> None:
    """Strict load with one clear line when the architecture differs; `hint` says how to fix
    it in the caller's terms (an option the command has)."""
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
            f"{source} does not fit this model architecture: {'; '.join(parts)}; {hint}"
        )
    model.load_state_dict(state_dict, strict=False)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a weights file's tensors into an existing model (every key used, none missing)."""
    load_state_dict(model, read_weights(path)["model"], str(path))
    return model


def load_model(
    weights: str | Path,
    recipe: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    overrides: Sequence[str] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model some weights need (from `recipe`, or the weights' own / inferred
    recipe) and load them. Returns (model in eval mode on `device`, recipe).

    ONNX files give an onnxruntime-backed module with the same call and outputs.
    """
    from ddetr_cli.recipe import apply_overrides

    if weights_format(weights) == "onnx":
        from ddetr_cli.export.runtime import load_onnx_model

        return load_onnx_model(weights, recipe, device=device, overrides=overrides)
    ckpt = read_weights(weights)
    if recipe is None:
        recipe = recipe_for_checkpoint(ckpt, overrides, f"weights {weights}")
    elif overrides:
        recipe = apply_overrides(recipe, overrides, "recipe")
    model, recipe = model_from_checkpoint(ckpt, recipe, str(weights))
    return model.to(device).eval(), recipe


def model_from_checkpoint(
    ckpt: dict[str, Any], recipe: dict[str, Any], source: str, keep_dtype: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """(the model ``recipe`` describes with a checkpoint dict's tensors loaded strictly, the
    recipe it was built from). ``keep_dtype``: in the tensors' precision (float64, float16)
    when they all share one, instead of float32."""
    from ddetr_cli.model import build_model

    recipe = copy.deepcopy(recipe)
    # The weights supply every tensor: never fetch ImageNet weights for them.
    recipe["model"]["pretrained_backbone"] = False
    model = build_model(recipe)
    dtypes = {v.dtype for v in ckpt["model"].values() if v.is_floating_point()}
    if keep_dtype and len(dtypes) == 1:
        model.to(dtypes.pop())
    load_state_dict(model, ckpt["model"], source)
    return model, recipe


def resolve_model(
    weights: str | Path | None,
    recipe_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """The one way every command gets its model: (model in eval mode on `device`, recipe).

    - weights and a recipe file: the file's architecture (overrides applied to it), the weights
      loaded into it;
    - weights alone: the weights' own recipe (stored, inferred or from config.json), with the
      overrides applied to it;
    - no weights: the recipe (default: the built-in plain R50) with random weights and no
      pretrained download, for benchmarks.
    """
    from ddetr_cli.recipe import load_recipe
    from ddetr_cli.runtime import resolve_device

    device = resolve_device(device)
    if weights is None:
        from ddetr_cli.model import build_model

        recipe = load_recipe(recipe_path, [*overrides, "model.pretrained_backbone=false"])
        return build_model(recipe).to(device).eval(), recipe
    if not Path(weights).exists() and not is_hub_id(weights):
        raise DdetrError(f"--weights {weights}: no such file")
    if recipe_path is not None:
        return load_model(weights, load_recipe(recipe_path, overrides), device=device)
    return load_model(weights, None, device=device, overrides=tuple(overrides))
