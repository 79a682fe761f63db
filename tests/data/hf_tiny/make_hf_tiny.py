"""Rebuild this folder: a tiny Deformable DETR saved by transformers in the Hub's layout.

Box refinement + two-stage (every rename rule and both tied head sets), d_model 32, one encoder
and two decoder layers, 3 levels, 3 classes. The ResNet-50 is cut down to its stem (conv1, bn1)
and a few tensors of layer1 so that the folder stays under 1 MB: it tests the key mapping,
not a runnable model (tests/test_hf.py builds full ones when transformers is installed).

Run with transformers 5.x (and timm) installed: python tests/data/hf_tiny/make_hf_tiny.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

HERE = Path(__file__).parent
KEEP_BACKBONE = ("conv1.", "bn1.", "layer1.0.bn", "layer1.0.downsample.")


def main() -> None:
    torch.manual_seed(0)
    config = DeformableDetrConfig(
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_feature_levels=3,
        encoder_n_points=2, decoder_n_points=2, num_queries=5, two_stage_num_proposals=5,
        with_box_refine=True, two_stage=True, id2label={0: "N/A", 1: "cat", 2: "dog"},
    )  # fmt: skip
    model = DeformableDetrForObjectDetection(config).eval()
    with torch.no_grad():  # no tensor may hide behind an init constant
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and (".backbone." not in name or tensor.dim() == 1):
                tensor.add_(torch.randn_like(tensor) * 0.05)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # transformers' own renaming to the Hub's names
        tensors = load_file(f"{tmp}/model.safetensors")
        saved_config = json.loads(Path(tmp, "config.json").read_text())
    # transformers 5 saves tied heads once; the Hub's 4.x files hold every copy
    for name, tensor in model.state_dict().items():
        if name.startswith(("class_embed.", "bbox_embed.")) and name not in tensors:
            tensors[name] = tensor.clone()
    prefix = "model.backbone.conv_encoder.model."
    tensors = {
        k: v.contiguous()
        for k, v in tensors.items()
        if not k.startswith(prefix) or k.removeprefix(prefix).startswith(KEEP_BACKBONE)
    }
    save_file(tensors, str(HERE / "model.safetensors"), metadata={"format": "pt"})
    # the Hub's 4.x config style: a timm backbone named by `backbone`, no backbone_config
    saved_config.pop("backbone_config")
    saved_config.update(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False)
    saved_config.pop("transformers_version", None)
    (HERE / "config.json").write_text(json.dumps(saved_config, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
