"""The criterion reproduces the official losses of the plain reference batch (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from reference_data import DATA, reference

from ddetr_cli import build_criterion
from ddetr_cli.recipe import load_recipe

REL = 1e-6


@pytest.fixture(scope="module")
def ref() -> dict:
    return reference()


@pytest.fixture(scope="module")
def outputs() -> dict:
    # Every decoder layer's outputs of the official model on the padded a.png + b.png batch,
    # made by tests/data/make_plain_batch_outputs.py.
    return torch.load(DATA / "plain_batch_outputs.pt", weights_only=True)


def test_stored_outputs_are_the_reference_batch(outputs, ref):
    for key in ("pred_logits", "pred_boxes"):
        assert (outputs[key] - ref["batch"][key]).abs().max().item() < 1e-6
    assert len(outputs["aux_outputs"]) == 5


def test_every_loss_term_matches_official(outputs, ref):
    criterion = build_criterion(load_recipe(None))
    losses = criterion(outputs, ref["targets"])
    expected = ref["loss"]
    compared = 0
    for name, value in expected.items():
        if name == "total_weighted":
            continue
        assert name in losses, name
        assert math.isclose(losses[name].item(), value, rel_tol=REL), (name, losses[name], value)
        compared += 1
    assert compared == 25
    total = criterion.total(losses).item()
    assert math.isclose(total, expected["total_weighted"], rel_tol=REL)


def test_weight_dict_official_sizes():
    plain = build_criterion(load_recipe(None)).weight_dict
    assert len(plain) == 18 and plain["loss_ce_4"] == 2.0 and plain["loss_bbox"] == 5.0
    two = load_recipe(None, ["model.with_box_refine=true", "model.two_stage=true"])
    weights = build_criterion(two).weight_dict
    assert len(weights) == 21 and weights["loss_giou_enc"] == 2.0


def test_two_stage_encoder_loss_uses_binary_targets():
    recipe = load_recipe(
        None,
        ["model.with_box_refine=true", "model.two_stage=true", "model.num_classes=4",
         "model.dec_layers=2"],
    )  # fmt: skip
    criterion = build_criterion(recipe)
    g = torch.Generator().manual_seed(0)

    def level(q):
        return {
            "pred_logits": torch.randn(1, q, 4, generator=g, dtype=torch.float64),
            "pred_boxes": torch.rand(1, q, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2,
        }

    out = {**level(5), "aux_outputs": [level(5)], "enc_outputs": level(9)}
    targets = [
        {
            "labels": torch.tensor([3, 2]),
            "boxes": torch.tensor(
                [[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.1, 0.3]], dtype=torch.float64
            ),
        }
    ]
    losses = criterion(out, targets)
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc", "loss_ce_0"} <= set(losses)
    binary = [{**targets[0], "labels": torch.zeros(2, dtype=torch.int64)}]
    alone = criterion._one_level(out["enc_outputs"], binary, 2.0, "", log=False)
    assert torch.allclose(alone["loss_ce"], losses["loss_ce_enc"])


def test_images_without_targets():
    criterion = build_criterion(load_recipe(None, ["model.num_classes=3", "model.dec_layers=1"]))
    out = {
        "pred_logits": torch.randn(2, 6, 3),
        "pred_boxes": torch.rand(2, 6, 4) * 0.5 + 0.2,
        "aux_outputs": [],
    }
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    losses = criterion(out, targets)
    assert torch.isfinite(criterion.total(losses))
    assert losses["loss_bbox"].item() == 0.0
