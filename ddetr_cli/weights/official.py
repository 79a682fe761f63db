"""The official release's checkpoints: the model's architecture from its `args` or key layout.

Official files are {"model", "optimizer", "lr_scheduler", "epoch", "args": argparse.Namespace}
(`args` missing in some copies); the key names are ddetr's own, so only the architecture has to be
recovered. Single-scale DC5 has the same layout as single-scale: without `args` it needs a recipe.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from torch import Tensor

from ddetr_cli.errors import DdetrError

# Official args that map one-to-one onto recipe model keys.
_ARGS_TO_MODEL = (
    "backbone",
    "dilation",
    "num_feature_levels",
    "hidden_dim",
    "nheads",
    "enc_layers",
    "dec_layers",
    "dim_feedforward",
    "dropout",
    "num_queries",
    "enc_n_points",
    "dec_n_points",
    "with_box_refine",
    "two_stage",
    "aux_loss",
)


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


def official_args(model: dict[str, Any]) -> argparse.Namespace:
    """The argparse namespace the official main.py stores, from a recipe's model section: the
    same one-to-one keys `infer_model_config` reads back, plus the fixed ones of the release."""
    fixed = {
        "position_embedding": "sine",
        "masks": False,
        "frozen_weights": None,
        "dataset_file": "coco",
    }
    return argparse.Namespace(**{key: model[key] for key in _ARGS_TO_MODEL}, **fixed)
