"""`ddetr convert`: weights from any format ddetr reads into ddetr's, transformers' or the
official code's.

The source is read with `ddetr_cli.weights.read_weights` (a ddetr checkpoint, an official
`.pth`, a run folder, a `.safetensors` file, a transformers folder or a Hub id), its recipe
resolved (stored, from config.json, or inferred from an official file), and its tensors loaded
strictly into the model that recipe builds, so a file that would not run is never written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ddetr_cli.errors import DdetrError, UsageError
from ddetr_cli.files import atomic_write
from ddetr_cli.model.variants import describe_model
from ddetr_cli.weights.official import official_args

TARGETS = ("ddetr", "hf", "official")


def convert(
    src: str | Path,
    dst: str | Path,
    to: str = "ddetr",
    recipe_path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Read `src`, write `dst` in format `to` (ddetr | hf | official). The architecture is the
    weights' own (stored, inferred or config.json) unless `recipe_path` names one; `overrides`
    apply to it. Returns a summary:
    {"src", "src_format", "dst", "to", "tensors_read", "tensors_written", "model", "notes"}."""
    from ddetr_cli.weights import model_from_checkpoint, read_weights, weights_format
    from ddetr_cli.weights.checkpoint import recipe_for_checkpoint

    if to not in TARGETS:
        raise UsageError(f"--to {to}: choose one of {', '.join(TARGETS)}")
    dst = Path(dst)
    src_format = weights_format(src)  # one line for a missing path or a file no reader takes
    ckpt = read_weights(src)
    if recipe_path is not None:
        from ddetr_cli.recipe import load_recipe

        recipe = load_recipe(recipe_path, overrides)
    else:
        recipe = recipe_for_checkpoint(ckpt, overrides, f"weights {src}")
    if to == "hf":
        from ddetr_cli.weights.hf import refusal

        problem = refusal(recipe["model"])
        if problem:
            raise DdetrError(f"{src}: {problem}")
    # In the source's precision (float64, float16) as it is.
    model, recipe = model_from_checkpoint(ckpt, recipe, str(src), keep_dtype=True)
    state_dict = model.state_dict()

    notes: list[str] = []
    if to == "hf":
        from ddetr_cli.weights.hf import backbone_layout, ddetr_to_hf, write_hf_folder

        write_hf_folder(state_dict, recipe, dst)
        written = len(ddetr_to_hf(state_dict))
        if backbone_layout(recipe["model"]) == "timm":
            notes.append(
                "a DC5 model (dilation): transformers builds its backbone from timm only, so "
                "loading this folder needs timm (pip install timm); other models need no timm"
            )
    elif to == "official":
        payload = {"model": state_dict, "args": official_args(recipe["model"])}
        with atomic_write(dst, "wb") as f:
            torch.save(payload, f)
        written = len(state_dict)
    elif dst.suffix == ".safetensors":
        from ddetr_cli.weights.safetensors_file import write_safetensors

        write_safetensors(state_dict, recipe, dst)
        written = len(state_dict)
    else:
        from ddetr_cli.weights import save_checkpoint

        save_checkpoint(dst, model, recipe, converted_from=str(src))
        written = len(state_dict)
    m = recipe["model"]
    return {
        "src": str(src),
        "src_format": ckpt.get("source", src_format) if src_format != "hub" else "hub",
        "dst": str(dst),
        "to": to,
        "tensors_read": len(ckpt["model"]),
        "tensors_written": written,
        "model": f"{describe_model(recipe)}, {m['num_classes']} classes, "
        f"{m['num_queries']} queries",
        "notes": notes,
    }
