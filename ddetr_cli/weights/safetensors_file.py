""".safetensors weights in ddetr's key names, with the resolved recipe in the file's metadata.

The metadata is {"format": "ddetr", "recipe": recipe as JSON}; nothing is unpickled on reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
from safetensors import safe_open
from torch import Tensor

from ddetr_cli.errors import DdetrError, one_line
from ddetr_cli.files import atomic_write

FORMAT = "ddetr"


def read_safetensors(path: str | Path) -> dict[str, Any]:
    """{"model": state dict, "recipe": the stored recipe (absent if the file has none)}."""
    path = Path(path)
    if not path.is_file():
        raise DdetrError(f"weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state_dict = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as exc:  # the library's error types vary between versions
        raise DdetrError(f"{path} is not a readable safetensors file ({one_line(exc)})") from exc
    ckpt: dict[str, Any] = {"model": state_dict}
    if "recipe" in metadata:
        try:
            recipe = json.loads(metadata["recipe"])
        except json.JSONDecodeError as exc:
            raise DdetrError(f"{path}: the recipe in its metadata is not JSON ({exc})") from None
        if not isinstance(recipe, dict):
            raise DdetrError(f"{path}: the recipe in its metadata is not a mapping")
        ckpt["recipe"] = recipe
    if not any(k.startswith("transformer.") for k in state_dict):
        hint = ""
        if any(k.startswith("model.") for k in state_dict):
            hint = "; a transformers model.safetensors is read from its folder (with config.json)"
        raise DdetrError(f"{path} is not a ddetr weights file (no transformer tensors){hint}")
    return ckpt


def write_safetensors(
    state_dict: dict[str, Tensor], recipe: dict[str, Any] | None, path: str | Path
) -> Path:
    """Write the tensors (ddetr names) and the recipe atomically."""
    path = Path(path)
    # safetensors refuses tensors that share storage (the shared heads): one copy per key
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    metadata = {"format": FORMAT}
    if recipe is not None:
        metadata["recipe"] = json.dumps(recipe)
    data = safetensors.torch.save(tensors, metadata=metadata)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return path
