"""The recipe schema: every key, its default and type, the values it may take.

The defaults are also the schema: a key exists iff it is in ``DEFAULTS``, and its value's type is
the type every recipe must use (int is accepted where a float is expected). Checking a recipe
against it is ``recipe.validate``; reading files and overrides is ``recipe.load``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ddetr_cli.data.formats import DATA_FORMATS
from ddetr_cli.model.variants import BACKBONES
from ddetr_cli.ops.choices import ATTENTION_BACKENDS

DEFAULTS: dict[str, Any] = {
    "model": {
        "backbone": "resnet50",
        "pretrained_backbone": False,
        "backbone_norm": "frozen",
        "freeze_backbone_stem": True,
        "dilation": False,
        "num_classes": 91,
        "class_names": None,
        "num_feature_levels": 4,
        "hidden_dim": 256,
        "nheads": 8,
        "enc_layers": 6,
        "dec_layers": 6,
        "dim_feedforward": 1024,
        "dropout": 0.1,
        "num_queries": 300,
        "enc_n_points": 4,
        "dec_n_points": 4,
        "with_box_refine": False,
        "two_stage": False,
        "aux_loss": True,
        "attention_backend": "auto",
        "num_detections": 100,
    },
    "loss": {
        "cls_loss_coef": 2.0,
        "bbox_loss_coef": 5.0,
        "giou_loss_coef": 2.0,
        "focal_alpha": 0.25,
    },
    "matcher": {
        "set_cost_class": 2.0,
        "set_cost_bbox": 5.0,
        "set_cost_giou": 2.0,
    },
    "data": {
        # auto (the layout of data.root decides), coco, yolo, voc, shapes; see docs/data.md.
        "format": "auto",
        "root": None,
        "train": {"images": None, "annotations": None},
        "val": {"images": None, "annotations": None},
        "eval_min_size": 800,
        "eval_max_size": 1333,
        "num_workers": 2,
        # Training augmentation: paper (flip + multi-scale / crop), flip, none.
        "augment": "paper",
        # Built-in shapes (format: shapes): training pictures come from `seed`, the val split
        # from its own fixed seed.
        # task: shapes3 (circle, rectangle, triangle) or shapes6 (those plus ellipse, star,
        # cross: a second task from the same generator, for transfer experiments).
        "shapes": {"train_images": 2000, "val_images": 200, "seed": 0, "task": "shapes3"},
    },
    "train": {
        "epochs": 50,
        "batch_size": 2,
        "lr": 2.0e-4,
        "lr_backbone": 2.0e-5,
        "lr_linear_proj_mult": 0.1,
        "weight_decay": 1.0e-4,
        "lr_drop": 40,
        # step (official: lr x 0.1 after lr_drop epochs), cosine or linear (to 0 over the run)
        "lr_schedule": "step",
        # optimiser steps over which every rate climbs linearly from lr/warmup_steps to lr
        # (0: none, the official); it multiplies whatever lr_schedule gives
        "warmup_steps": 0,
        "clip_max_norm": 0.1,
        "amp": "off",
        "seed": 42,
        "output_dir": "runs/default",
        "eval_every": 1,
        "checkpoint_every": 1,
        "device": "auto",  # auto (cuda:LOCAL_RANK if available, else cpu) | cpu | cuda
        "log_every": 20,  # steps between metrics.jsonl lines
        "max_steps": 0,  # stop after this many optimiser steps in all (0: epochs decide)
        "accumulate": 1,  # batches whose gradients add up to one optimiser step
        "ema": 0.0,  # decay of an exponential moving average of the weights (0: off)
        "ema_warmup": 2000,  # steps over which the EMA's decay warms up (0: none)
        # torch.compile the model for training steps (Inductor): faster steps after a compile
        # that takes minutes the first time (docs/design.md#compiled-training-steps).
        "compile": False,
        # convolutions on channels-last (NHWC) activations: the same values to float rounding,
        # the backbone's steps cheaper (docs/design.md#channels-last)
        "channels_last": True,
        "patience": 0,  # stop after this many evaluations without a better val AP (0: off)
        "tensorboard": False,  # TensorBoard event files in the run folder
    },
}


# The recipe schema's version, stored in every checkpoint. Renaming or removing a key (or
# changing what a value means) bumps it and adds a migration below, so that every checkpoint
# written since 0.1.0 keeps loading. Adding a key with a default needs neither: stored recipes
# are partial as far as validation is concerned, and missing keys take their defaults.
RECIPE_SCHEMA = 1

# Paths of the data. A relative one means: in a recipe file, relative to that file's folder; on
# the command line (key=value), relative to the current folder. Resolved recipes hold them
# absolute, so a run's recipe.yaml and checkpoints work from any folder (docs/data.md#paths).
DATA_PATH_KEYS = (
    "data.root",
    "data.train.images",
    "data.train.annotations",
    "data.val.images",
    "data.val.annotations",
)

# Keys whose default is null, and what they accept once set.
STR_LIST = "a list of strings"
NULLABLE: dict[str, Any] = {
    "model.num_classes": int,  # null: from the data (training); default 91 (COCO ids)
    "model.class_names": STR_LIST,
    "data.root": str,
    "data.train.images": str,
    "data.train.annotations": str,
    "data.val.images": str,
    "data.val.annotations": str,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "model.backbone": (*BACKBONES, "convnet"),  # convnet: small, from scratch (shapes)
    "model.backbone_norm": ("frozen", "batch"),
    "model.attention_backend": ATTENTION_BACKENDS,
    "train.amp": ("off", "bf16", "fp16"),
    "train.lr_schedule": ("step", "cosine", "linear"),
    "data.format": DATA_FORMATS,
    "data.shapes.task": ("shapes3", "shapes6"),
    "data.augment": ("paper", "flip", "none"),
    "train.device": ("auto", "cpu", "cuda"),
}

# Inclusive lower bounds.
MINIMUM: dict[str, float] = {
    "model.num_classes": 1,
    "model.num_feature_levels": 1,
    "model.hidden_dim": 1,
    "model.nheads": 1,
    "model.enc_layers": 1,
    "model.dec_layers": 1,
    "model.dim_feedforward": 1,
    "model.num_queries": 1,
    "model.enc_n_points": 1,
    "model.dec_n_points": 1,
    "model.num_detections": 1,
    "model.dropout": 0,
    "loss.focal_alpha": 0,
    "loss.cls_loss_coef": 0,
    "loss.bbox_loss_coef": 0,
    "loss.giou_loss_coef": 0,
    "matcher.set_cost_class": 0,
    "matcher.set_cost_bbox": 0,
    "matcher.set_cost_giou": 0,
    "data.eval_min_size": 1,
    "data.eval_max_size": 1,
    "data.num_workers": 0,
    "train.epochs": 1,
    "train.batch_size": 1,
    "train.lr": 0,
    "train.lr_backbone": 0,  # 0 = frozen backbone
    "train.lr_linear_proj_mult": 0,
    "train.weight_decay": 0,
    "train.lr_drop": 1,
    "train.clip_max_norm": 0,  # 0 = no clipping
    "train.seed": 0,
    "train.eval_every": 1,
    "train.checkpoint_every": 1,
    "data.shapes.train_images": 1,
    "data.shapes.val_images": 1,
    "data.shapes.seed": 0,
    "train.log_every": 1,
    "train.max_steps": 0,
    "train.warmup_steps": 0,
    "train.accumulate": 1,
    "train.ema": 0,
    "train.ema_warmup": 0,
    "train.patience": 0,
}
# Upper bounds of some of those: (bound, whether the bound itself is allowed).
MAXIMUM: dict[str, tuple[float, bool]] = {
    "model.dropout": (1.0, False),
    "loss.focal_alpha": (1.0, True),
    "train.ema": (1.0, False),  # a decay per step: 0 is off, 1 would never move
}


def walk(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every section and leaf of a nested dict, depth first."""
    items = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        items.append((dotted, value))
        if isinstance(value, Mapping):
            items.extend(walk(value, dotted + "."))
    return items


SCHEMA: dict[str, Any] = dict(walk(DEFAULTS))
