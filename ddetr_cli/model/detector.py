"""The Deformable DETR detector: backbone, input projections, transformer and heads."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddetr_cli.model.attention import MSDeformAttn
from ddetr_cli.model.backbone import Backbone, ConvNetBackbone
from ddetr_cli.model.position_encoding import PositionEmbeddingSine
from ddetr_cli.model.transformer import DeformableTransformer, refine_boxes
from ddetr_cli.model.unpadded import nothing_padded, remembered
from ddetr_cli.model.utils import clones, pad_images


class MLP(nn.Module):
    """Plain multi-layer perceptron with ReLU between layers (the box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def _projection(in_channels: int, hidden_dim: int, **conv: Any) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden_dim, kernel_size=conv.pop("kernel_size", 1), **conv),
        nn.GroupNorm(32, hidden_dim),
    )


class DeformableDETR(nn.Module):
    """Module tree and attribute names mirror the official model, so official state dicts
    load with strict=True and ours load in the official code (docs/design.md#head-sharing).

    Box prediction relative to the reference (paper appendix A.3), iterative refinement (A.4)
    and two-stage (A.5) are switched by `with_box_refine` and `two_stage`."""

    def __init__(
        self,
        backbone: Backbone,
        transformer: DeformableTransformer,
        num_classes: int,
        num_queries: int,
        num_feature_levels: int,
        aux_loss: bool = True,
        with_box_refine: bool = False,
        two_stage: bool = False,
    ) -> None:
        super().__init__()
        if two_stage and not with_box_refine:
            raise ValueError("two_stage requires with_box_refine")
        hidden_dim = transformer.d_model
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.num_feature_levels = num_feature_levels
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage
        # NHWC pictures into the convolutions: optimize_for_inference, train.channels_last
        self.channels_last = False
        self.transformer = transformer
        class_embed = nn.Linear(hidden_dim, num_classes)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)

        # Index 0 keeps the official `backbone.0.body.*` keys; the sine encoding has no weights.
        self.backbone = nn.ModuleList([backbone])
        self.position_encoding = PositionEmbeddingSine(hidden_dim // 2)
        projections = [_projection(c, hidden_dim) for c in backbone.num_channels]
        extra_in = backbone.num_channels[-1]
        for _ in range(num_feature_levels - len(projections)):
            # Stride-2 3x3 levels: the first on raw C5, the next on the previous level.
            projections.append(
                _projection(extra_in, hidden_dim, kernel_size=3, stride=2, padding=1)
            )
            extra_in = hidden_dim
        self.input_proj = nn.ModuleList(projections)

        bias_value = -math.log((1 - 0.01) / 0.01)
        nn.init.constant_(class_embed.bias, bias_value)
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

        num_dec = transformer.decoder.num_layers
        num_pred = num_dec + 1 if two_stage else num_dec
        if with_box_refine:
            self.class_embed = clones(class_embed, num_pred)
            self.bbox_embed = clones(bbox_embed, num_pred)
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            self.transformer.decoder.bbox_embed = self.bbox_embed
        else:
            # One shared head listed num_pred times, as the official state dict has it.
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList([class_embed] * num_pred)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
        if two_stage:
            self.transformer.decoder.class_embed = self.class_embed
            for head in self.bbox_embed:
                nn.init.zeros_(head.layers[-1].bias[2:])

    def set_attention_backend(self, backend: str | None) -> None:
        """Force every deformable attention onto one backend (None or 'auto': best available)."""
        chosen = None if backend in (None, "auto") else backend
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.backend = chosen

    def fixed_runtime(self) -> None:
        """None: the attention backend, dtype and torch.compile are the caller's to choose
        (see ``model.protocol.Detector``)."""
        return None

    def optimize_for_inference(self) -> DeformableDETR:
        """Make a model that is only run (predict, evaluate, bench) faster; outputs stay equal
        up to float rounding.

        Folds the backbone's frozen batch norms into its convolutions and runs the convolutions
        in channels-last memory layout (measured on a 2-core CPU at 800x1067: the backbone's
        time drops by about 40%). The state dict no longer has the official layout, so never
        save or train a model after this.
        """
        from ddetr_cli.model.fuse import fold_frozen_batchnorms

        fold_frozen_batchnorms(self.backbone)
        self.backbone.to(memory_format=torch.channels_last)
        self.input_proj.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def _features(self, images: Tensor, mask: Tensor) -> tuple[list[Tensor], ...]:
        srcs, masks, pos = [], [], []
        levels = self.backbone[0](images, mask)
        for proj, (feature, level_mask) in zip(self.input_proj, levels, strict=False):
            srcs.append(proj(feature))
            masks.append(level_mask)
        for lvl in range(len(levels), self.num_feature_levels):
            src = self.input_proj[lvl](levels[-1][0] if lvl == len(levels) else srcs[-1])
            # The extra levels' masks come from the image mask, not from C5's
            # (docs/design.md#padding-mask).
            masks.append(F.interpolate(mask[None].float(), size=src.shape[-2:])[0].bool())
            srcs.append(src)
        pos = self._position_encodings(mask, masks)
        return srcs, masks, [p.to(src.dtype) for p, src in zip(pos, srcs, strict=True)]

    def _position_encodings(self, mask: Tensor, masks: list[Tensor]) -> list[Tensor]:
        """Every level's sine encoding (float32); kept between calls when the image mask pads
        nothing (model.unpadded)."""
        encode = self.position_encoding
        if not nothing_padded(mask):
            return [encode(level_mask) for level_mask in masks]
        key = ("position", encode.num_feats, encode.temperature, *(m.shape for m in masks))
        return remembered(key, lambda: [encode(level_mask) for level_mask in masks])

    def forward(self, images: list[Tensor] | Tensor) -> dict[str, Any]:
        """images: normalised CHW tensors of any sizes (or one BCHW batch, unpadded)."""
        batch, mask = pad_images(images)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        srcs, masks, pos = self._features(batch, mask)
        query_embed = None if self.two_stage else self.query_embed.weight
        hs, init_reference, inter_references, enc_class, enc_coord_unact = self.transformer(
            srcs, masks, pos, query_embed
        )
        classes, coords = [], []
        for lvl in range(hs.shape[0]):
            reference = init_reference if lvl == 0 else inter_references[lvl - 1]
            classes.append(self.class_embed[lvl](hs[lvl]))
            coords.append(refine_boxes(self.bbox_embed[lvl](hs[lvl]), reference))
        out: dict[str, Any] = {"pred_logits": classes[-1], "pred_boxes": coords[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": c, "pred_boxes": b}
                for c, b in zip(classes[:-1], coords[:-1], strict=True)
            ]
        if self.two_stage:
            out["enc_outputs"] = {"pred_logits": enc_class, "pred_boxes": enc_coord_unact.sigmoid()}
        return out


def build_model(recipe: dict[str, Any]) -> DeformableDETR:
    """Build the detector described by a recipe's `model` section."""
    cfg = recipe["model"]
    levels = cfg["num_feature_levels"]
    if cfg["backbone"] == "convnet":
        backbone = ConvNetBackbone(levels, cfg["backbone_norm"], cfg["freeze_backbone_stem"])
    else:
        backbone = Backbone(
            cfg["backbone"],
            num_levels=levels,
            dilation=cfg["dilation"],
            norm=cfg["backbone_norm"],
            freeze_stem=cfg["freeze_backbone_stem"],
            pretrained=cfg["pretrained_backbone"],
        )
    transformer = DeformableTransformer(
        d_model=cfg["hidden_dim"],
        nhead=cfg["nheads"],
        num_encoder_layers=cfg["enc_layers"],
        num_decoder_layers=cfg["dec_layers"],
        dim_feedforward=cfg["dim_feedforward"],
        dropout=cfg["dropout"],
        num_feature_levels=levels,
        dec_n_points=cfg["dec_n_points"],
        enc_n_points=cfg["enc_n_points"],
        two_stage=cfg["two_stage"],
        two_stage_num_proposals=cfg["num_queries"],
    )
    model = DeformableDETR(
        backbone,
        transformer,
        num_classes=cfg["num_classes"],
        num_queries=cfg["num_queries"],
        num_feature_levels=levels,
        aux_loss=cfg["aux_loss"],
        with_box_refine=cfg["with_box_refine"],
        two_stage=cfg["two_stage"],
    )
    model.set_attention_backend(cfg["attention_backend"])
    return model
