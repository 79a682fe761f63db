"""Access to the official-model reference data copied into tests/data."""

from __future__ import annotations

import argparse
import functools
import importlib.util
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
VARIANTS = ("plain", "refine", "two_stage", "single_scale")
# Official parameter counts (requires_grad only, all), release logs (docs/design.md#parameters).
OFFICIAL_PARAMS = {
    "plain": (39_847_265, 40_069_665),
    "refine": (40_627_260, 40_849_660),
    "two_stage": (40_959_129, 41_181_529),
    "single_scale": (33_844_193, 34_066_593),
}
# Recipe overrides that describe each official layout.
VARIANT_OVERRIDES = {
    "plain": [],
    "refine": ["model.with_box_refine=true"],
    "two_stage": ["model.with_box_refine=true", "model.two_stage=true"],
    "single_scale": ["model.num_feature_levels=1"],
}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_spec = importlib.util.spec_from_file_location("ddetr_test_fill", DATA / "fill.py")
_fill = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fill)


def layout(variant: str) -> list[dict]:
    return _fill.load_layout(DATA / f"layout_{variant}.json")


def official_state_dict(variant: str, dtype: torch.dtype = torch.float32) -> dict:
    """Deterministic synthetic weights in the official layout (same keys, same sharing).

    A fresh dict each call; the tensors are shared between calls, so never modify them."""
    return dict(_cached_state_dict(variant, dtype))


@functools.lru_cache(maxsize=4)
def _cached_state_dict(variant: str, dtype: torch.dtype) -> dict:
    return _fill.build_state_dict(layout(variant), dtype)


def official_args(variant: str) -> argparse.Namespace:
    """The argparse namespace an official checkpoint stores (the fields ddetr reads)."""
    return argparse.Namespace(
        backbone="resnet50", dilation=False, position_embedding="sine", num_feature_levels=1
        if variant == "single_scale" else 4, hidden_dim=256, nheads=8, enc_layers=6,
        dec_layers=6, dim_feedforward=1024, dropout=0.1, num_queries=300, enc_n_points=4,
        dec_n_points=4, with_box_refine=variant in ("refine", "two_stage"),
        two_stage=variant == "two_stage", aux_loss=True, lr=2e-4, dataset_file="coco",
        coco_path="/data/coco", masks=False, epochs=50,
    )  # fmt: skip


def reference() -> dict:
    return torch.load(DATA / "ref_plain.pt", weights_only=False)


def normalised_picture(name: str, dtype: torch.dtype) -> torch.Tensor:
    """RGB / 255, ImageNet mean/std: how the reference pictures were fed to the model."""
    from torchvision.io import decode_image

    image = decode_image(str(DATA / name)).to(dtype) / 255
    mean = torch.tensor(MEAN, dtype=dtype)[:, None, None]
    std = torch.tensor(STD, dtype=dtype)[:, None, None]
    return (image - mean) / std
