"""Deformable Transformer encoder and decoder (paper section 4.1, appendix A.4-A.5).

Which module holds which symbol of the paper: docs/design.md#equations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddetr_cli.model.attention import MSDeformAttn
from ddetr_cli.model.position_encoding import proposal_pos_embed
from ddetr_cli.model.unpadded import nothing_padded, remembered
from ddetr_cli.model.utils import clones, inverse_sigmoid


def _padding_or_none(mask_flatten: Tensor) -> Tensor | None:
    """The padding mask for the attention, or None when nothing is padded (a batch of
    same-size pictures on a CPU, as the shapes demo's): zeroing no value costs a copy of the
    value and of its gradient in every attention call. Kept on a GPU (the check would be a host
    sync) and when exporting or compiling."""
    return None if nothing_padded(mask_flatten) else mask_flatten


def _valid_ratios(mask: Tensor) -> Tensor:
    """(B, H, W) padding mask -> (B, 2) valid fractions as (w, h), in float32 like the official."""
    _, h, w = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


def _relu(hidden: Tensor) -> Tensor:
    """The FFN's ReLU, in place only when no gradient is recorded: Linear returns a view for
    3-d inputs, and an in-place op on a view makes the backward copy the whole hidden tensor
    three times (about 5% of a training step on a CPU). The values are the same either way."""
    return F.relu(hidden, inplace=not hidden.requires_grad)


class EncoderLayer(nn.Module):
    def __init__(
        self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None,
    ) -> Tensor:
        attended = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(_relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class Encoder(nn.Module):
    def __init__(self, layer: EncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.num_layers = num_layers

    @staticmethod
    def reference_points(
        shapes: list[tuple[int, int]], valid_ratios: Tensor, device: torch.device
    ) -> Tensor:
        """Pixel centres of every level, normalised to the valid area, then mapped onto every
        level through its valid ratio: (B, S, L, 2) in (x, y) order: the normalised p̂_q of eq. 3
        (docs/design.md#encoder-reference-points)."""
        per_level = []
        for lvl, (h, w) in enumerate(shapes):
            ref_y, ref_x = torch.meshgrid(
                # arange, not linspace: the same values, and a size that stays symbolic
                # when the model is exported with dynamic shapes.
                torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            per_level.append(torch.stack((ref_x, ref_y), -1))
        return torch.cat(per_level, 1)[:, :, None] * valid_ratios[:, None]

    def forward(
        self,
        src: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        pos: Tensor,
        padding_mask: Tensor | None,
    ) -> Tensor:
        """reference_points: ``Encoder.reference_points`` of the feature maps."""
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


class DecoderLayer(nn.Module):
    def __init__(
        self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int
    ) -> None:
        super().__init__()
        # Official naming: norm1 follows cross-attention, norm2 self-attention.
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None,
    ) -> Tensor:
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        attended = self.cross_attn(
            tgt + query_pos,
            reference_points,
            memory,
            spatial_shapes,
            level_start_index,
            padding_mask,
        )
        tgt = self.norm1(tgt + self.dropout1(attended))
        ffn = self.linear2(self.dropout3(_relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


def refine_boxes(delta: Tensor, reference: Tensor) -> Tensor:
    """sigmoid(delta + logit(reference)): box prediction relative to a reference (paper appendix
    A.3-A.4); a 2-d (point) reference only moves cx, cy (docs/design.md#box-refinement)."""
    logit = inverse_sigmoid(reference)
    if reference.shape[-1] == 4:
        return (delta + logit).sigmoid()
    return torch.cat([delta[..., :2] + logit, delta[..., 2:]], -1).sigmoid()


class Decoder(nn.Module):
    def __init__(self, layer: DecoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.num_layers = num_layers
        # Set by the detector: per-layer box heads for iterative refinement (None: fixed
        # references), and for two-stage the class heads (index num_layers = encoder head).
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def forward(
        self,
        tgt: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        query_pos: Tensor,
        padding_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Returns every layer's output (D, B, Q, C) and the reference each layer produced."""
        outputs, references = [], []
        box_ratios = torch.cat([valid_ratios, valid_ratios], -1)
        for lid, layer in enumerate(self.layers):
            ratios = box_ratios if reference_points.shape[-1] == 4 else valid_ratios
            reference_input = reference_points[:, :, None] * ratios[:, None]
            tgt = layer(
                tgt,
                query_pos,
                reference_input,
                memory,
                spatial_shapes,
                level_start_index,
                padding_mask,
            )
            if self.bbox_embed is not None:
                # The next layer starts from this layer's box, with no gradient through it.
                reference_points = refine_boxes(
                    self.bbox_embed[lid](tgt), reference_points
                ).detach()
            outputs.append(tgt)
            references.append(reference_points)
        return torch.stack(outputs), torch.stack(references)


class DeformableTransformer(nn.Module):
    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        dec_n_points: int = 4,
        enc_n_points: int = 4,
        two_stage: bool = False,
        two_stage_num_proposals: int = 300,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        enc_layer = EncoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
        )
        self.encoder = Encoder(enc_layer, num_encoder_layers)
        dec_layer = DecoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points
        )
        self.decoder = Decoder(dec_layer, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def proposal_boxes(
        self, padding_mask: Tensor, shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """One proposal per encoder position: its pixel centre with a level-sized box, as
        logits (B, S, 4), +inf where invalid; and the (B, S, 1) invalid positions (paper
        appendix A.5; docs/design.md#two-stage)."""
        n = padding_mask.shape[0]
        proposals, start = [], 0
        for lvl, (h, w) in enumerate(shapes):
            level_mask = padding_mask[:, start : start + h * w].view(n, h, w)
            valid_h = torch.sum(~level_mask[:, :, 0], 1)
            valid_w = torch.sum(~level_mask[:, 0, :], 1)
            grid_y, grid_x = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=padding_mask.device),
                torch.arange(w, dtype=torch.float32, device=padding_mask.device),
                indexing="ij",
            )
            grid = torch.stack([grid_x, grid_y], -1)
            scale = torch.stack([valid_w, valid_h], 1).view(n, 1, 1, 2)
            grid = (grid.unsqueeze(0).expand(n, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0**lvl)
            proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
            start += h * w
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        invalid = padding_mask.unsqueeze(-1) | ~valid
        proposals = torch.log(proposals / (1 - proposals)).masked_fill(invalid, float("inf"))
        return proposals, invalid

    def encoder_proposals(
        self, memory: Tensor, boxes: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The projected memory, zero at invalid positions, and the proposals: ``boxes`` is
        ``proposal_boxes``' (proposals, invalid)."""
        proposals, invalid = boxes
        output_memory = memory.masked_fill(invalid, 0.0)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        return output_memory, proposals

    def select_proposals(
        self, output_memory: Tensor, proposals: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Two-stage query selection (paper appendix A.5): the encoder head scores and refines
        every proposal, the `two_stage_num_proposals` best become the decoder's queries.

        output_memory (B, S, C) and proposals (B, S, 4, logits) come from `encoder_proposals`.
        Returns the encoder head's class logits (B, S, K) and unactivated boxes (B, S, 4), then
        the decoder's initial reference boxes (B, Q, 4), query_pos and tgt (B, Q, C) each.
        The ranking uses class channel 0 only and the chosen boxes are detached: see
        docs/design.md#two-stage.
        """
        head = self.decoder.num_layers  # the extra head after the decoder's, for the encoder
        enc_class = self.decoder.class_embed[head](output_memory)
        enc_coord_unact = self.decoder.bbox_embed[head](output_memory) + proposals
        topk = min(self.two_stage_num_proposals, enc_class.shape[1])
        topk_idx = torch.topk(enc_class[..., 0], topk, dim=1)[1]
        topk_coords = torch.gather(enc_coord_unact, 1, topk_idx.unsqueeze(-1).expand(-1, -1, 4))
        topk_coords = topk_coords.detach()
        reference_points = topk_coords.sigmoid()
        pos_trans = self.pos_trans_norm(
            self.pos_trans(proposal_pos_embed(topk_coords, self.d_model // 2))
        )
        query_pos, tgt = torch.split(pos_trans, self.d_model, dim=2)
        return enc_class, enc_coord_unact, reference_points, query_pos, tgt

    def _geometry(
        self, shapes: list[tuple[int, int]], masks: list[Tensor], mask_flatten: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """What the sizes and padding masks decide: spatial shapes (L, 2), level start
        indices (L,), valid ratios (B, L, 2), the encoder's reference points and, for two-stage,
        ``proposal_boxes``."""
        device = mask_flatten.device
        # Stacked from the sizes, not as_tensor(shapes): an exported graph then keeps them
        # symbolic instead of recording the example's sizes as a constant.
        spatial_shapes = torch.stack(
            [
                torch.stack([torch.full((), s, dtype=torch.long, device=device) for s in hw])
                for hw in shapes
            ]
        )
        level_start_index = torch.cat(
            (spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])
        )
        valid_ratios = torch.stack([_valid_ratios(m) for m in masks], 1)
        references = self.encoder.reference_points(shapes, valid_ratios, device)
        boxes = self.proposal_boxes(mask_flatten, shapes) if self.two_stage else None
        return spatial_shapes, level_start_index, valid_ratios, references, boxes

    def forward(
        self,
        srcs: list[Tensor],
        masks: list[Tensor],
        pos_embeds: list[Tensor],
        query_embed: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        shapes = [(src.shape[2], src.shape[3]) for src in srcs]
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        mask_flatten = torch.cat([mask.flatten(1) for mask in masks], 1)
        pos_flatten = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                for lvl, pos in enumerate(pos_embeds)
            ],
            1,
        )
        attention_mask = _padding_or_none(mask_flatten)
        if attention_mask is None:  # same-size pictures on a CPU: sizes decide (model.unpadded)
            key = ("geometry", *shapes, mask_flatten.shape[0], self.two_stage)
            geometry = remembered(key, lambda: self._geometry(shapes, masks, mask_flatten))
        else:
            geometry = self._geometry(shapes, masks, mask_flatten)
        spatial_shapes, level_start_index, valid_ratios, encoder_references, boxes = geometry
        memory = self.encoder(
            src_flatten,
            encoder_references,
            spatial_shapes,
            level_start_index,
            pos_flatten,
            attention_mask,
        )

        enc_class = enc_coord_unact = None
        if self.two_stage:
            output_memory, proposals = self.encoder_proposals(memory, boxes)
            enc_class, enc_coord_unact, reference_points, query_pos, tgt = self.select_proposals(
                output_memory, proposals
            )
        else:
            if query_embed is None:
                raise ValueError("query_embed is required without two_stage")
            bs = src_flatten.shape[0]
            query_pos, tgt = torch.split(query_embed, self.d_model, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(bs, -1, -1)
            tgt = tgt.unsqueeze(0).expand(bs, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
        init_reference = reference_points
        hs, inter_references = self.decoder(
            tgt,
            reference_points,
            memory,
            spatial_shapes,
            level_start_index,
            valid_ratios,
            query_pos,
            attention_mask,
        )
        return hs, init_reference, inter_references, enc_class, enc_coord_unact
