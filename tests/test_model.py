"""The model in every official configuration: key layout, sharing, counts, init, invariants."""

from __future__ import annotations

import math

import pytest
import torch
from reference_data import OFFICIAL_PARAMS, VARIANT_OVERRIDES, VARIANTS, layout

from ddetr_cli.model import build_model, pad_images, post_process
from ddetr_cli.model.transformer import refine_boxes
from ddetr_cli.recipe import load_recipe


def _official(variant: str, *extra: str):
    return build_model(load_recipe(None, [*VARIANT_OVERRIDES[variant], *extra]))


def _tiny(*extra: str):
    """A small model for forward checks: ResNet-18, 64 channels, 2+2 layers, 20 queries."""
    return build_model(
        load_recipe(
            None,
            [
                "model.backbone=resnet18",
                "model.hidden_dim=64",
                "model.dim_feedforward=128",
                "model.enc_layers=2",
                "model.dec_layers=2",
                "model.num_queries=20",
                "model.num_classes=5",
                "model.dropout=0.0",
                *extra,
            ],
        )
    ).eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_has_the_official_layout(variant):
    model = _official(variant)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {item["key"]: tuple(item["shape"]) for item in layout(variant)}
    assert ours == official


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts_equal_the_official(variant):
    model = _official(variant)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert (trainable, total) == OFFICIAL_PARAMS[variant]


def test_dc5_has_the_single_scale_layout_and_stride_16():
    model = _official("single_scale", "model.dilation=true")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        item["key"]: tuple(item["shape"]) for item in layout("single_scale")
    }
    assert model.backbone[0].strides == [16]
    feature = model.backbone[0](torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
    assert feature[0][0].shape[-2:] == (4, 4)


def test_heads_are_shared_in_plain_and_independent_with_refinement():
    plain = _official("plain")
    assert all(head is plain.class_embed[0] for head in plain.class_embed)
    assert all(head is plain.bbox_embed[0] for head in plain.bbox_embed)
    assert plain.transformer.decoder.bbox_embed is None

    refine = _official("refine")
    assert len({id(h) for h in refine.class_embed}) == 6
    assert refine.transformer.decoder.bbox_embed is refine.bbox_embed
    assert refine.transformer.decoder.class_embed is None

    two_stage = _official("two_stage")
    assert len(two_stage.class_embed) == 7 and len(two_stage.bbox_embed) == 7
    assert two_stage.transformer.decoder.class_embed is two_stage.class_embed
    assert not hasattr(two_stage, "query_embed")


def test_loading_keeps_shared_heads_shared():
    from reference_data import official_state_dict

    from ddetr_cli.weights import load_state_dict

    model = _official("plain")
    load_state_dict(model, official_state_dict("plain"), "fill")
    pointers = {h.weight.data_ptr() for h in model.class_embed}
    assert len(pointers) == 1


def test_official_initialisation():
    prior = -math.log((1 - 0.01) / 0.01)
    plain = _official("plain")
    torch.testing.assert_close(plain.class_embed[0].bias, torch.full((91,), prior))
    last = plain.bbox_embed[0].layers[-1]
    assert torch.all(last.weight == 0) and last.bias.tolist() == [0, 0, -2, -2]

    refine = _official("refine")
    assert refine.bbox_embed[0].layers[-1].bias.tolist() == [0, 0, -2, -2]
    assert all(h.layers[-1].bias.abs().sum() == 0 for h in refine.bbox_embed[1:])
    two_stage = _official("two_stage")
    assert all(h.layers[-1].bias.abs().sum() == 0 for h in two_stage.bbox_embed)

    attn = plain.transformer.encoder.layers[0].self_attn
    grid = attn.sampling_offsets.bias.view(8, 4, 4, 2)
    expected_p0 = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)]
    torch.testing.assert_close(grid[:, 0, 0], torch.tensor(expected_p0, dtype=torch.float32))
    torch.testing.assert_close(grid[1, 2, :], torch.tensor([[1.0, 1], [2, 2], [3, 3], [4, 4]]))
    assert torch.all(attn.attention_weights.weight == 0)
    assert torch.all(attn.sampling_offsets.weight == 0)


def test_backbone_channels_come_from_the_backbone():
    for name, channels in (("resnet18", [128, 256, 512]), ("resnet50", [512, 1024, 2048])):
        model = build_model(load_recipe(None, [f"model.backbone={name}"]))
        assert model.backbone[0].num_channels == channels
        assert model.input_proj[3][0].in_channels == channels[-1]


def test_stem_and_layer1_are_frozen():
    model = _official("plain")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(
        n.startswith(("backbone.0.body.conv1", "backbone.0.body.layer1")) for n in frozen
    )
    unfrozen = build_model(load_recipe(None, ["model.freeze_backbone_stem=false"]))
    assert all(p.requires_grad for p in unfrozen.parameters())


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["model.with_box_refine=true"],
        ["model.with_box_refine=true", "model.two_stage=true"],
        ["model.num_feature_levels=1"],
        ["model.num_feature_levels=2"],
        ["model.num_feature_levels=5"],
        ["model.backbone_norm=batch", "model.dec_n_points=2", "model.enc_n_points=3"],
    ],
    ids=["plain", "refine", "two_stage", "single_scale", "two_levels", "five_levels", "misc"],
)
def test_forward_output_contract(extra):
    model = _tiny(*extra)
    images = [torch.randn(3, 70, 90), torch.randn(3, 96, 64)]
    with torch.no_grad():
        out = model(images)
    assert out["pred_logits"].shape == (2, 20, 5)
    assert out["pred_boxes"].shape == (2, 20, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert len(out["aux_outputs"]) == 1
    if "model.two_stage=true" in extra:
        enc = out["enc_outputs"]
        assert enc["pred_logits"].shape[:2] == enc["pred_boxes"].shape[:2]
        assert enc["pred_logits"].shape[0] == 2
    else:
        assert "enc_outputs" not in out


def test_pad_images_pads_bottom_right_and_masks():
    a, b = torch.ones(3, 2, 3), torch.full((3, 4, 1), 2.0)
    batch, mask = pad_images([a, b])
    assert batch.shape == (2, 3, 4, 3)
    assert torch.equal(batch[0, :, :2, :3], a) and batch[0, :, 2:].abs().sum() == 0
    assert mask[0, :2, :3].logical_not().all() and mask[0, 2:].all()
    assert mask[1, :, 1:].all() and not mask[1, :, 0].any()


def test_pictures_in_a_batch_do_not_interact():
    """Given the same padded size, a picture's outputs don't depend on its batch mates."""
    model = _tiny("model.with_box_refine=true", "model.two_stage=true")
    small = torch.randn(3, 60, 80)
    with torch.no_grad():
        first = model([small, torch.randn(3, 96, 100)])
        second = model([small, torch.randn(3, 96, 100)])
    torch.testing.assert_close(first["pred_logits"][0], second["pred_logits"][0])
    torch.testing.assert_close(first["pred_boxes"][0], second["pred_boxes"][0])
    assert not torch.allclose(first["pred_logits"][1], second["pred_logits"][1])


def test_refinement_detaches_the_reference_chain():
    """Layer k's boxes get no gradient via layer k-1's box head (docs/design.md#box-refinement)."""
    model = _tiny("model.with_box_refine=true", "model.dec_layers=3")
    model.train()
    out = model([torch.randn(3, 64, 64)])
    out["pred_boxes"].sum().backward()
    first_head = model.bbox_embed[0].layers[-1].weight
    last_head = model.bbox_embed[2].layers[-1].weight
    assert first_head.grad is None or torch.all(first_head.grad == 0)
    assert last_head.grad is not None and last_head.grad.abs().sum() > 0


def test_refine_boxes_point_and_box_references():
    delta = torch.tensor([[0.5, -0.5, 0.2, 0.3]])
    point = torch.tensor([[0.25, 0.75]])
    box = torch.tensor([[0.25, 0.75, 0.5, 0.5]])
    logit = torch.logit
    torch.testing.assert_close(
        refine_boxes(delta, point),
        torch.stack([logit(point[:, 0]) + 0.5, logit(point[:, 1]) - 0.5,
                     torch.tensor([0.2]), torch.tensor([0.3])], -1).sigmoid(),
    )  # fmt: skip
    torch.testing.assert_close(refine_boxes(delta, box), (delta + logit(box)).sigmoid())


def test_two_stage_proposals_are_invalid_on_padding():
    model = _tiny("model.with_box_refine=true", "model.two_stage=true")
    transformer = model.transformer
    shapes = [(4, 6), (2, 3)]
    s = sum(h * w for h, w in shapes)
    memory = torch.randn(1, s, 64)
    mask = torch.zeros(1, s, dtype=torch.bool)
    mask[0, 5] = True  # row 0, column 5 of level 0 is padding
    with torch.no_grad():
        boxes = transformer.proposal_boxes(mask, shapes)
        out_memory, proposals = transformer.encoder_proposals(memory, boxes)
    assert torch.isinf(proposals[0, 5]).all()
    # Level-0 box sides are 0.05, as logits; the centre of (0, 0) is 0.5 / valid size.
    torch.testing.assert_close(proposals[0, 0, 2:], torch.logit(torch.tensor([0.05, 0.05])))
    torch.testing.assert_close(
        proposals[0, 0, :2].sigmoid(), torch.tensor([0.5 / 5, 0.5 / 4]), rtol=1e-5, atol=1e-6
    )
    # A padded position's memory is zeroed before enc_output, so it equals any other zero row.
    zero_row = transformer.enc_output_norm(transformer.enc_output(torch.zeros(64)))
    torch.testing.assert_close(out_memory[0, 5], zero_row)


def test_post_process_top_k_over_queries_and_classes():
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 2, 1] = 3.0  # best: query 2, class 1
    logits[0, 0, 3] = 2.0  # second: query 0, class 3
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.5, 0.5, 1.0]]])
    result = post_process(
        {"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]), 2
    )[0]
    assert result["labels"].tolist() == [1, 3]
    torch.testing.assert_close(result["scores"], torch.tensor([3.0, 2.0]).sigmoid())
    torch.testing.assert_close(
        result["boxes"], torch.tensor([[0.0, 0.0, 100.0, 100.0], [80.0, 30.0, 120.0, 70.0]])
    )


def test_optimize_for_inference_keeps_the_outputs():
    model = _tiny("model.with_box_refine=true", "model.two_stage=true")
    # Non-trivial frozen statistics, so folding them has something to get right.
    generator = torch.Generator().manual_seed(0)
    for name, buffer in model.backbone.named_buffers():
        if name.endswith(("running_var", "weight")):
            buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
        elif name.endswith(("running_mean", "bias")):
            buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
    images = [torch.randn(3, 70, 90), torch.randn(3, 64, 64)]
    with torch.no_grad():
        before = model(images)
        optimized = model.optimize_for_inference()
        after = optimized(images)
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in optimized.backbone.modules())
    torch.testing.assert_close(after["pred_logits"], before["pred_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after["pred_boxes"], before["pred_boxes"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("extra", [[], ["model.with_box_refine=true"]])
def test_attention_under_autocast_hands_the_op_a_bf16_value_and_float32_sampling(
    monkeypatch, extra
):
    """Under autocast every attention layer gives the op its value in bf16 (the kernel reads it
    without a copy) and locations and weights in float32 (bf16 ones would be 0.65 px coarse)."""
    from ddetr_cli.ops import op as op_module

    seen = []
    real = op_module._ms_deform_attn_op

    def spy(value, spatial_shapes, level_start_index, loc, weights, backend):
        seen.append((value.dtype, loc.dtype, weights.dtype))
        return real(value, spatial_shapes, level_start_index, loc, weights, backend)

    monkeypatch.setattr(op_module, "_ms_deform_attn_op", spy)
    model = _tiny("model.attention_backend=reference", *extra)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model([torch.rand(3, 64, 80)])
    assert seen == [(torch.bfloat16, torch.float32, torch.float32)] * 4  # 2 encoder + 2 decoder
