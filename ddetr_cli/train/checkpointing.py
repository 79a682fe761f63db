"""Training state in checkpoints: what exact resume needs, and fine-tuning from weights."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ddetr_cli.errors import DdetrError
from ddetr_cli.weights import load_state_dict, read_checkpoint

log = logging.getLogger(__name__)
_CLASS_HEADS = ("class_embed.", "transformer.decoder.class_embed.")


def rng_state() -> dict[str, Any]:
    """Every RNG's state as plain Python values (bytes, ints), so it pickles anywhere: in
    weights_only checkpoints and through all_gather_object."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": bytes(torch.get_rng_state().numpy()),
        "numpy": (name, keys.astype(np.uint32).tobytes(), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [bytes(s.numpy()) for s in torch.cuda.get_rng_state_all()]
    return state


def _byte_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_byte_tensor(state["torch"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.frombuffer(keys, dtype=np.uint32).copy(), pos, has_gauss, gauss))
    random.setstate(
        tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"]
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_byte_tensor(b) for b in state["cuda"]])


def load_initial_weights(model: nn.Module, path: str | Path) -> str:
    """Load weights to start training from: any format `--weights` reads (a checkpoint, an
    official .pth, a run folder's best checkpoint, a transformers folder or Hub id,
    .safetensors). Class heads of another class count are left at their fresh initialisation;
    returns a line saying what was done."""
    from ddetr_cli.weights import read_weights, resolve_weights_path

    path = resolve_weights_path(path)
    ckpt = read_weights(path)
    state = dict(ckpt["model"])
    own = model.state_dict()
    reset = [
        k
        for k in own
        if k.startswith(_CLASS_HEADS) and k in state and state[k].shape != own[k].shape
    ]
    for key in reset:
        state[key] = own[key]
    hint = "train with the recipe these weights were made with (or key=value overrides)"
    load_state_dict(model, state, str(path), hint)
    if reset:
        old = ckpt["model"]["class_embed.0.weight"].shape[0]
        new = own["class_embed.0.weight"].shape[0]
        return f"loaded {path}; re-initialised the class heads ({old} -> {new} classes)"
    return f"loaded {path}"


def find_resume(target: str | Path) -> Path:
    """The checkpoint a resume continues from: a run folder's checkpoint_last.pth, or a file."""
    path = Path(target)
    if path.is_dir():
        path = path / "checkpoint_last.pth"
        if not path.is_file():
            raise DdetrError(f"nothing to resume: {path} does not exist")
    if not path.is_file():
        raise DdetrError(f"resume checkpoint not found: {path}")
    return path


def read_training_state(path: Path) -> dict[str, Any]:
    data = read_checkpoint(path)
    if "optimizer" not in data or "epoch" not in data:
        raise DdetrError(
            f"{path}: has no training state to resume (use --weights to start from its weights)"
        )
    return data
