"""Official-model parity on the plain reference: the same logits, boxes and top-100."""

from __future__ import annotations

import pytest
import torch
from reference_data import normalised_picture, official_state_dict, reference

from ddetr_cli.checkpoint import load_state_dict
from ddetr_cli.config import load_recipe
from ddetr_cli.model import build_model, post_process

# (logits, normalised boxes) tolerances the issue sets per dtype.
TOLERANCE = {torch.float64: (1e-6, 1e-6), torch.float32: (1e-4, 1e-5)}
PICTURES = ("a.png", "b.png")


@pytest.fixture(scope="module")
def ref() -> dict:
    return reference()


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["fp64", "fp32"])
def plain_model(request):
    dtype = request.param
    model = build_model(load_recipe(None)).to(dtype).eval()
    load_state_dict(model, official_state_dict("plain", dtype), "reference weights")
    return model, dtype


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b).abs().max().item()


@pytest.mark.parametrize("name", PICTURES)
def test_single_picture_matches_official(plain_model, ref, name):
    model, dtype = plain_model
    logits_tol, boxes_tol = TOLERANCE[dtype]
    image = normalised_picture(name, dtype)
    with torch.inference_mode():
        out = model([image])
    expected = ref["single"][name]
    assert _max_diff(out["pred_logits"][0], expected["pred_logits"]) < logits_tol
    assert _max_diff(out["pred_boxes"][0], expected["pred_boxes"]) < boxes_tol

    detections = post_process(out, torch.tensor([image.shape[1:]]), num_detections=100)[0]
    # Same top-100 in the same order; pixel boxes scale the normalised tolerance by the size.
    assert torch.equal(detections["labels"], expected["labels"])
    assert _max_diff(detections["scores"], expected["scores"]) < logits_tol
    assert _max_diff(detections["boxes"], expected["boxes"]) < boxes_tol * max(image.shape)


def test_padded_batch_matches_official(plain_model, ref):
    model, dtype = plain_model
    logits_tol, boxes_tol = TOLERANCE[dtype]
    images = [normalised_picture(name, dtype) for name in PICTURES]
    with torch.inference_mode():
        out = model(images)  # zero-padded bottom-right to 1067x1067 inside
    assert out["pred_logits"].shape == (2, 300, 91)
    assert _max_diff(out["pred_logits"], ref["batch"]["pred_logits"]) < logits_tol
    assert _max_diff(out["pred_boxes"], ref["batch"]["pred_boxes"]) < boxes_tol
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 300, 91) and aux["pred_boxes"].shape == (2, 300, 4)
