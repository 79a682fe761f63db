"""The tiny Deformable DETR the training tests build from recipes/shapes.yaml: a run of a few
pictures takes seconds on a CPU. Each test file adds its data and schedule overrides."""

from __future__ import annotations

TINY_MODEL = [
    "model.hidden_dim=32", "model.nheads=4", "model.enc_layers=1", "model.dec_layers=2",
    "model.dim_feedforward=64", "model.num_queries=6", "model.num_feature_levels=2",
]  # fmt: skip
