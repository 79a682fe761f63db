"""Regenerate plain_batch_outputs.pt: every decoder layer's outputs for the reference batch.

ref_plain.pt holds only the official model's final outputs of the padded a.png + b.png batch,
but the criterion's parity test needs the auxiliary (per decoder layer) outputs too. ddetr's
model reproduces the official one to ~1e-15 in float64 (tests/test_parity.py), so its outputs
stand in for the official ones. Run from the repository root:

    python tests/data/make_plain_batch_outputs.py

Writes tests/data/plain_batch_outputs.pt: {"pred_logits", "pred_boxes", "aux_outputs": [...]},
float64. The criterion test also checks the final outputs against ref_plain.pt's "batch".
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from reference_data import normalised_picture, official_state_dict  # noqa: E402

from ddetr_cli.weights import load_state_dict  # noqa: E402
from ddetr_cli.recipe import load_recipe  # noqa: E402
from ddetr_cli.model import build_model  # noqa: E402


def main() -> None:
    model = build_model(load_recipe(None)).double().eval()  # build, cast, THEN load
    load_state_dict(model, official_state_dict("plain", torch.float64), "reference weights")
    images = [normalised_picture(name, torch.float64) for name in ("a.png", "b.png")]
    with torch.inference_mode():
        out = model(images)
    keep = {
        "pred_logits": out["pred_logits"].clone(),
        "pred_boxes": out["pred_boxes"].clone(),
        "aux_outputs": [
            {"pred_logits": a["pred_logits"].clone(), "pred_boxes": a["pred_boxes"].clone()}
            for a in out["aux_outputs"]
        ],
    }
    path = TESTS / "data" / "plain_batch_outputs.pt"
    torch.save(keep, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
