"""Hugging Face transformers folders, .safetensors files and `ddetr convert` (issue #11).

Without transformers: the key mapping both ways (a committed tiny Hub-layout folder and ddetr
models of every variant), the config rules, errors, .safetensors and the three conversions.
With transformers (and timm): real transformers models of each variant, saved in both layouts,
give ddetr's outputs, and come back from ddetr tensor for tensor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ddetr_cli.errors import DdetrError
from ddetr_cli.model import build_model
from ddetr_cli.recipe import load_recipe
from ddetr_cli.weights import load_model, load_state_dict, read_weights
from ddetr_cli.weights.checkpoint import read_checkpoint, recipe_for_checkpoint

safetensors_torch = pytest.importorskip("safetensors.torch")

from ddetr_cli.weights import hf  # noqa: E402
from ddetr_cli.weights.convert import convert  # noqa: E402
from ddetr_cli.weights.safetensors_file import read_safetensors, write_safetensors  # noqa: E402

DATA = Path(__file__).parent / "data"
TINY = DATA / "hf_tiny"
# Small transformers: the ResNet-50 dominates. 4 levels (transformers takes 1 or >= 3).
SMALL = [
    "model.hidden_dim=32", "model.nheads=2", "model.enc_layers=1", "model.dec_layers=2",
    "model.dim_feedforward=64", "model.num_queries=7", "model.enc_n_points=2",
    "model.dec_n_points=2", "model.num_classes=5", "model.class_names=[a, b, c, d, e]",
    "model.dropout=0.0",
]  # fmt: skip
VARIANTS = {
    "plain": [],
    "refine": ["model.with_box_refine=true"],
    "two_stage": ["model.with_box_refine=true", "model.two_stage=true"],
}
# float64 goals: transformers computes a few parts (position encodings) in float32.
LOGITS_TOL, BOXES_TOL = 1e-4, 1e-5


def _picture() -> torch.Tensor:
    """A normalised random picture of an unusual size (no side a multiple of 32)."""
    generator = torch.Generator().manual_seed(7)
    return torch.randn(3, 123, 157, generator=generator, dtype=torch.float64)


def _noise_(state_dict: dict[str, torch.Tensor], seed: int, backbone_prefix: str) -> None:
    """Noise every tensor outside the backbone and the backbone's norms (its convolutions are
    random already), so that no key hides behind an init constant; variances stay positive."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in state_dict.items():
            if not tensor.is_floating_point():
                continue
            if name.startswith(backbone_prefix) and tensor.dim() > 1:
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            if name.endswith("running_var"):
                tensor.mul_(1 + 0.1 * noise.abs())
            else:
                tensor.add_(0.02 * noise)


def _ddetr_model(variant: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    recipe = load_recipe(None, [*SMALL, *VARIANTS[variant]])
    model = build_model(recipe).to(dtype).eval()
    _noise_(model.state_dict(), seed, "backbone.")
    return model, recipe


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    different = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not different, different[:5]


# ------------------------------------------------------------------ the committed tiny folder


def test_tiny_folder_reads_into_ddetr_names():
    ckpt = hf.read_hf_folder(TINY)
    model = ckpt["recipe"]["model"]
    assert model["class_names"] == ["N/A", "cat", "dog"]
    assert (model["num_classes"], model["hidden_dim"], model["nheads"]) == (3, 32, 2)
    assert (model["enc_layers"], model["dec_layers"], model["num_feature_levels"]) == (1, 2, 3)
    assert model["with_box_refine"] and model["two_stage"] and model["num_queries"] == 5
    sd = ckpt["model"]
    assert sd["transformer.decoder.layers.1.self_attn.in_proj_weight"].shape == (96, 32)
    assert sd["transformer.enc_output.weight"].shape == (32, 32)
    assert "backbone.0.body.conv1.weight" in sd
    assert "transformer.decoder.class_embed.2.weight" in sd and "class_embed.2.weight" in sd


def test_tiny_folder_round_trip_is_exact(tmp_path):
    """The committed folder has timm's backbone; it is written back with transformers' own
    ResNet (no timm needed), and either reads into the same tensors."""
    stored = safetensors_torch.load_file(str(TINY / "model.safetensors"))
    ckpt = hf.read_hf_folder(TINY)
    _assert_same_tensors(hf.ddetr_to_hf(ckpt["model"], "timm"), stored)
    hf.write_hf_folder(ckpt["model"], ckpt["recipe"], tmp_path / "out")
    written = safetensors_torch.load_file(str(tmp_path / "out/model.safetensors"))
    _assert_same_tensors(written, hf.ddetr_to_hf(ckpt["model"], "resnet"))
    assert "model.backbone.conv_encoder.model.embedder.embedder.convolution.weight" in written
    again = hf.read_hf_folder(tmp_path / "out")
    assert again["recipe"] == ckpt["recipe"]
    _assert_same_tensors(again["model"], ckpt["model"])


def test_tiny_folder_as_pytorch_model_bin(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(TINY / "config.json", folder)
    torch.save(safetensors_torch.load_file(str(TINY / "model.safetensors")),
               folder / "pytorch_model.bin")  # fmt: skip
    _assert_same_tensors(hf.read_hf_folder(folder)["model"], hf.read_hf_folder(TINY)["model"])


# ------------------------------------------------------------------ the mapping, every variant


@pytest.mark.parametrize("variant", [*VARIANTS, "single_scale_dc5"])
def test_every_ddetr_key_maps_both_ways(variant):
    extra = ["model.num_feature_levels=1", "model.dilation=true"]
    overrides = [*SMALL, *VARIANTS.get(variant, extra)]
    model = build_model(load_recipe(None, overrides))
    sd = model.state_dict()
    config = hf.recipe_to_config(load_recipe(None, overrides)["model"])
    recipe_model, resnet_keys = hf.config_to_recipe(config)
    assert resnet_keys == (variant != "single_scale_dc5")  # DC5: transformers builds it from timm
    for layout in hf.BACKBONES:
        hub = hf.ddetr_to_hf(sd, layout)
        assert all(k.startswith(("model.", "class_embed.", "bbox_embed.")) for k in hub)
        assert not any("in_proj" in k or "norm1" in k or "linear1" in k for k in hub)
        assert any(".conv_encoder.model.encoder.stages.3.layers.2.layer.2.conv" in k
                   for k in hub) == (layout == "resnet")  # fmt: skip
        back = hf.hf_to_ddetr(hub, recipe_model, layout == "resnet")
        _assert_same_tensors(back, {k: v for k, v in sd.items() if "num_batches" not in k})
    hub = hf.ddetr_to_hf(sd, "resnet" if resnet_keys else "timm")
    # transformers 5.x in-memory names read the same
    v5 = {
        k.replace("backbone.conv_encoder.model.", "backbone.model.")
        .replace(".fc1.", ".mlp.fc1.").replace(".fc2.", ".mlp.fc2.")
        .replace("self_attn.out_proj", "self_attn.o_proj"): v
        for k, v in hub.items()
    }  # fmt: skip
    _assert_same_tensors(hf.hf_to_ddetr(v5, recipe_model, resnet_keys), back)


def test_tied_heads_stored_once_are_filled_in():
    recipe = load_recipe(None, [*SMALL, *VARIANTS["two_stage"]])
    sd = build_model(recipe).state_dict()
    hub = hf.ddetr_to_hf(sd, "timm")
    # what transformers 5 saves: the decoder's copies only
    only_decoder = {k: v for k, v in hub.items() if not k.startswith(("class_embed", "bbox_embed"))}
    _assert_same_tensors(hf.hf_to_ddetr(only_decoder, recipe["model"]), sd)
    plain = load_recipe(None, SMALL)
    sd = build_model(plain).state_dict()
    hub = {k: v for k, v in hf.ddetr_to_hf(sd, "timm").items() if not k.startswith(("class_embed.1",
           "bbox_embed.1"))}  # fmt: skip
    _assert_same_tensors(hf.hf_to_ddetr(hub, plain["model"]), sd)


def test_config_rules():
    base = json.loads((TINY / "config.json").read_text())
    gaps = dict(base, id2label={"0": "a", "2": "c"})
    model, _ = hf.config_to_recipe(gaps)
    assert model["class_names"] == ["a", "N/A", "c"] and model["num_classes"] == 3
    v5 = dict(base, backbone_config={"model_type": "timm_backbone", "backbone": "resnet101",
              "output_stride": 16})  # fmt: skip
    v5.pop("backbone")
    model, resnet_keys = hf.config_to_recipe(v5)
    assert (model["backbone"], model["dilation"], resnet_keys) == ("resnet101", True, False)
    hf_resnet = dict(base, use_timm_backbone=False, backbone_config={
        "model_type": "resnet", "depths": [3, 4, 23, 3], "layer_type": "bottleneck"})  # fmt: skip
    model, resnet_keys = hf.config_to_recipe(hf_resnet)
    assert (model["backbone"], resnet_keys) == ("resnet101", True)
    config = hf.recipe_to_config(load_recipe(None, [*SMALL, *VARIANTS["two_stage"]])["model"])
    assert not config["use_timm_backbone"] and config["backbone"] is None  # no timm needed
    resnet = config["backbone_config"]
    assert (resnet["model_type"], resnet["depths"], resnet["out_indices"]) == (
        "resnet", [3, 4, 6, 3], [2, 3, 4])  # fmt: skip
    assert config["use_pretrained_backbone"] is False
    dc5 = hf.recipe_to_config(
        load_recipe("single_scale_dc5", ["model.backbone=resnet101"])["model"]
    )
    assert dc5["use_timm_backbone"] and dc5["backbone"] == "resnet101" and dc5["dilation"]
    assert config["num_queries"] == config["two_stage_num_proposals"] == 7
    assert config["label2id"] == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}


# ------------------------------------------------------------------ errors


def _folder_with(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "folder"
    shutil.copytree(TINY, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "detr"}, "model_type 'detr' is not 'deformable_detr'"),
        ({"backbone": "resnet18"}, "backbone 'resnet18' is not supported"),
        ({"backbone_config": {"model_type": "swin"}}, "backbone 'swin' is not supported"),
        ({"use_timm_backbone": False, "backbone_config": {"model_type": "resnet",
          "depths": [2, 2, 2, 2], "layer_type": "basic"}}, "resnet depths [2, 2, 2, 2]"),
        ({"position_embedding_type": "learned"}, "position_embedding_type 'learned'"),
        ({"decoder_ffn_dim": 128}, "encoder_ffn_dim and decoder_ffn_dim differ"),
    ],
)  # fmt: skip
def test_refused_configs(tmp_path, changes, message):
    folder = _folder_with(tmp_path, **changes)
    with pytest.raises(DdetrError, match="config.json: ") as info:
        hf.read_hf_folder(folder)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_files(tmp_path):
    folder = _folder_with(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(DdetrError, match=r"has no weights: neither model.safetensors nor "):
        read_weights(folder)
    (folder / "config.json").unlink()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(DdetrError, match="no config.json"):
        hf.read_hf_folder(folder)


def test_foreign_tensors_are_named(tmp_path):
    folder = _folder_with(tmp_path)
    tensors = safetensors_torch.load_file(str(folder / "model.safetensors"))
    tensors["model.mask_head.weight"] = torch.zeros(2)
    safetensors_torch.save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(DdetrError, match="1 tensors that are not Deformable DETR's: model.mask_h"):
        hf.read_hf_folder(folder)


def test_hub_offline(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")

    def offline(**kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(DdetrError) as info:
        read_weights("SenseTime/deformable-detr")
    message = str(info.value)
    assert "Hub cannot be reached" in message and "--weights path/to/folder" in message
    assert "\n" not in message


def test_hub_download_fetches_config_and_weights_only(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    asked = []

    def fake(repo_id, allow_patterns):
        asked.append((repo_id, allow_patterns))
        folder = tmp_path / "cache" / repo_id
        folder.mkdir(parents=True, exist_ok=True)
        for name in allow_patterns:
            if (TINY / name).is_file():
                shutil.copy(TINY / name, folder)
        return str(folder)

    monkeypatch.setattr(hub, "snapshot_download", fake)
    ckpt = read_weights("someone/tiny-deformable-detr")
    assert asked == [("someone/tiny-deformable-detr", ["config.json", "model.safetensors"])]
    assert ckpt["recipe"]["model"]["class_names"] == ["N/A", "cat", "dog"]


def test_hub_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(DdetrError, match=r"pip install 'ddetr-cli\[hf\]'"):
        hf.download("SenseTime/deformable-detr")


def test_writer_refuses_what_transformers_cannot_run(tmp_path):
    two_levels = load_recipe(None, [*SMALL, "model.num_feature_levels=2"])
    with pytest.raises(DdetrError, match="1 or at least 3 feature levels"):
        hf.write_hf_folder({}, two_levels, tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DdetrError, match="not a transformers folder; not replacing it"):
        hf.write_hf_folder({}, load_recipe(None, SMALL), tmp_path / "busy")


# ------------------------------------------------------------------ .safetensors and convert


def test_safetensors_file_round_trip(tmp_path):
    model, recipe = _ddetr_model("refine", torch.float32)
    path = write_safetensors(model.state_dict(), recipe, tmp_path / "m.safetensors")
    ckpt = read_weights(path)
    assert ckpt["recipe"] == recipe
    _assert_same_tensors(ckpt["model"], model.state_dict())
    loaded, loaded_recipe = load_model(path)
    assert loaded_recipe["model"]["with_box_refine"]
    with pytest.raises(DdetrError, match="read from its folder"):
        read_safetensors(TINY / "model.safetensors")


def test_convert_ddetr_hf_official_and_back(tmp_path):
    model, recipe = _ddetr_model("two_stage", torch.float32)
    src = tmp_path / "ddetr.pth"
    from ddetr_cli.weights import save_checkpoint

    save_checkpoint(src, model, recipe)
    summary = convert(src, tmp_path / "hf", "hf")
    assert summary["tensors_written"] == len(hf.ddetr_to_hf(model.state_dict()))
    assert (tmp_path / "hf/config.json").is_file()
    convert(tmp_path / "hf", tmp_path / "back.safetensors", "ddetr")
    convert(tmp_path / "back.safetensors", tmp_path / "official.pth", "official")
    convert(tmp_path / "official.pth", tmp_path / "ddetr_again.pth", "ddetr")

    official = read_checkpoint(tmp_path / "official.pth")  # weights_only=True + Namespace
    assert isinstance(official["args"], argparse.Namespace)
    assert official["args"].two_stage and official["args"].num_queries == 7
    _assert_same_tensors(official["model"], model.state_dict())
    again = read_checkpoint(tmp_path / "ddetr_again.pth")
    _assert_same_tensors(again["model"], model.state_dict())
    ours = recipe_for_checkpoint(again)["model"]
    assert {k: ours[k] for k in ("two_stage", "hidden_dim", "nheads", "num_queries")} == {
        "two_stage": True, "hidden_dim": 32, "nheads": 2, "num_queries": 7}  # fmt: skip
    with pytest.raises(DdetrError, match="--to onnx: choose one of ddetr, hf, official"):
        convert(src, tmp_path / "x", "onnx")


def test_convert_writes_as_the_umask_says(tmp_path):
    """Folders and files as `mkdir` and `open` would make them (was: 0700 and 0600)."""
    import os
    import stat

    from ddetr_cli.weights import save_checkpoint

    model, recipe = _ddetr_model("plain", torch.float32)
    src = save_checkpoint(tmp_path / "src.pth", model, recipe)
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        convert(src, out / "hf", "hf")
        convert(src, out / "hf", "hf")  # replacing a transformers folder
        convert(src, out / "m.safetensors", "ddetr")
        convert(src, out / "o.pth", "official")
        convert(src, out / "d.pth", "ddetr")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert modes == {
        "hf": 0o750, "hf/config.json": 0o640, "hf/model.safetensors": 0o640,
        "m.safetensors": 0o640, "o.pth": 0o640, "d.pth": 0o640,
    }  # fmt: skip


def test_convert_cli(tmp_path):
    import typer
    from typer.testing import CliRunner

    from ddetr_cli.cli.convert import convert as convert_command

    app = typer.Typer()
    app.command()(convert_command)
    result = CliRunner().invoke(app, [str(TINY), str(tmp_path / "t.safetensors"), "--to", "ddetr"])
    # the tiny folder's backbone is cut short: convert refuses it in one line
    assert result.exit_code == 1 and isinstance(result.exception, DdetrError)
    assert "does not fit this model architecture" in str(result.exception)
    model, recipe = _ddetr_model("plain", torch.float32)
    from ddetr_cli.weights import save_checkpoint

    save_checkpoint(tmp_path / "m.pth", model, recipe)
    result = CliRunner().invoke(app, [str(tmp_path / "m.pth"), str(tmp_path / "hf"), "--to", "hf"])
    assert result.exit_code == 0, result.output
    assert "-> " in result.output and "(hf, " in result.output


def test_convert_to_hf_says_which_models_it_takes(tmp_path):
    from typer.testing import CliRunner

    from ddetr_cli.cli import app
    from ddetr_cli.weights import save_checkpoint

    shapes = load_recipe("shapes", ["model.hidden_dim=32", "model.nheads=2"])
    src = save_checkpoint(tmp_path / "demo.pth", build_model(shapes), shapes)
    with pytest.raises(DdetrError) as info:
        convert(src, tmp_path / "hf", "hf")
    message = str(info.value)
    assert "--to hf takes models with a resnet50 or resnet101 backbone" in message
    assert "this one has convnet (the shapes demo's small CNN)" in message
    assert not (tmp_path / "hf").exists()
    help_text = CliRunner().invoke(app, ["convert", "--help"], env={"COLUMNS": "300"}).output
    assert "resnet50 or resnet101 backbone" in help_text and "convnet" in help_text


def test_a_dc5_model_converted_to_hf_says_it_needs_timm(tmp_path):
    from ddetr_cli.weights import save_checkpoint

    recipe = load_recipe("single_scale_dc5", [*SMALL, "model.pretrained_backbone=false"])
    src = save_checkpoint(tmp_path / "dc5.pth", build_model(recipe), recipe)
    summary = convert(src, tmp_path / "hf", "hf")
    assert len(summary["notes"]) == 1 and "needs timm (pip install timm)" in summary["notes"][0]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["use_timm_backbone"]
    plain = save_checkpoint(tmp_path / "plain.pth", *_ddetr_model("plain", torch.float32))
    assert convert(plain, tmp_path / "hf2", "hf")["notes"] == []


# ------------------------------------------------------------------ against transformers

transformers_marks = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def transformers_lib():
    pytest.importorskip("timm")
    return pytest.importorskip("transformers")


def _hf_config(transformers_lib, variant: str, **extra):
    refine = variant != "plain"
    return transformers_lib.DeformableDetrConfig(
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_feature_levels=4,
        encoder_n_points=2, decoder_n_points=2, num_queries=7, two_stage_num_proposals=7,
        with_box_refine=refine, two_stage=variant == "two_stage", dropout=0.0,
        id2label={i: name for i, name in enumerate("abcde")}, **extra,
    )  # fmt: skip


def _hf_outputs(model, image: torch.Tensor):
    with torch.inference_mode():
        out = model(pixel_values=image[None], pixel_mask=torch.ones(image.shape[1:])[None].long())
    return out.logits[0], out.pred_boxes[0]


def _ddetr_outputs(model, image: torch.Tensor):
    with torch.inference_mode():
        out = model([image])
    return out["pred_logits"][0], out["pred_boxes"][0]


@pytest.fixture(scope="module")
def saved_transformers(transformers_lib, tmp_path_factory):
    """variant -> (transformers model in float64, its outputs, Hub-layout folder, 5.x folder)."""
    root = tmp_path_factory.mktemp("transformers")
    image = _picture()
    made = {}
    for seed, variant in enumerate(VARIANTS):
        torch.manual_seed(seed)
        model = transformers_lib.DeformableDetrForObjectDetection(
            _hf_config(transformers_lib, variant)
        )
        model = model.double().eval()
        _noise_(model.state_dict(), seed, "model.backbone.")
        hub = root / f"{variant}_hub"
        model.save_pretrained(hub)  # transformers writes the Hub's key names
        v5 = root / f"{variant}_v5"  # transformers 5.x's own names, as held in memory
        v5.mkdir()
        shutil.copy(hub / "config.json", v5)
        tensors = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
        safetensors_torch.save_file(tensors, str(v5 / "model.safetensors"))
        made[variant] = (model, _hf_outputs(model, image), hub, v5)
    return made


@transformers_marks
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_to_ddetr_and_back(saved_transformers, transformers_lib, variant, tmp_path,
                                         capsys):  # fmt: skip
    """Both layouts give one ddetr state dict with transformers' outputs; written back (with
    transformers' own ResNet for timm's), it loads in transformers tensor for tensor."""
    original, (logits, boxes), hub, v5 = saved_transformers[variant]
    hub_ckpt, v5_ckpt = hf.read_hf_folder(hub), hf.read_hf_folder(v5)
    assert any(k.startswith("model.backbone.model.") for k in
               safetensors_torch.load_file(str(v5 / "model.safetensors")))  # fmt: skip
    _assert_same_tensors(hub_ckpt["model"], v5_ckpt["model"])
    assert hub_ckpt["recipe"] == v5_ckpt["recipe"]
    recipe = recipe_for_checkpoint(hub_ckpt)
    assert recipe["model"]["class_names"] == list("abcde")
    model = build_model(recipe).double().eval()  # float64 before the tensors go in
    load_state_dict(model, hub_ckpt["model"], str(hub))
    ours_logits, ours_boxes = _ddetr_outputs(model, _picture())
    dl, db = _max_diff(ours_logits, logits), _max_diff(ours_boxes, boxes)
    with capsys.disabled():
        print(
            f"\n[{variant}] transformers vs ddetr, float64, both layouts: max |logits| diff "
            f"{dl:.2e} (|logits| up to {logits.abs().max():.2f}), |boxes| diff {db:.2e}"
        )
    assert dl <= LOGITS_TOL and db <= BOXES_TOL

    hf.write_hf_folder(model.state_dict(), recipe, tmp_path / "out")
    again = transformers_lib.DeformableDetrForObjectDetection.from_pretrained(tmp_path / "out")
    assert again.dtype == torch.float64
    assert type(again.model.backbone.model).__name__ == "ResNetBackbone"  # not timm's
    _assert_same_tensors(hf.hf_to_ddetr(again.state_dict(), recipe["model"], True),
                         hf.hf_to_ddetr(original.state_dict(), recipe["model"], False))  # fmt: skip
    again_logits, again_boxes = _hf_outputs(again.eval(), _picture())
    assert _max_diff(again_logits, logits) <= 1e-9 and _max_diff(again_boxes, boxes) <= 1e-9


@transformers_marks
def test_official_file_to_hf_gives_the_same_outputs(transformers_lib, tmp_path, capsys):
    """A small model saved as the official code saves it, converted --to hf, run in
    transformers: ddetr's outputs (and so the official code's, test_parity.py)."""
    from ddetr_cli.weights.official import official_args

    model, recipe = _ddetr_model("plain", torch.float64, seed=3)
    torch.save({"model": model.state_dict(), "args": official_args(recipe["model"]),
                "epoch": 49}, tmp_path / "official.pth")  # fmt: skip
    convert(tmp_path / "official.pth", tmp_path / "hf", "hf")
    theirs = transformers_lib.DeformableDetrForObjectDetection.from_pretrained(tmp_path / "hf")
    image = _picture()
    logits, boxes = _hf_outputs(theirs.eval(), image)
    ours_logits, ours_boxes = _ddetr_outputs(model, image)
    dl, db = _max_diff(ours_logits, logits), _max_diff(ours_boxes, boxes)
    with capsys.disabled():
        print(
            f"\n[official -> hf] ddetr vs transformers, float64: |logits| {dl:.2e}, "
            f"|boxes| {db:.2e}"
        )
    assert dl <= LOGITS_TOL and db <= BOXES_TOL


@transformers_marks
def test_transformers_resnet_backbone(transformers_lib, tmp_path):
    """A transformers ResNet-50 (not timm) backbone: its own key names map onto ddetr's."""
    resnet = transformers_lib.ResNetConfig(
        depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], embedding_size=64,
        layer_type="bottleneck", out_features=["stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = _hf_config(transformers_lib, "plain", backbone_config=resnet, use_timm_backbone=False)
    torch.manual_seed(5)
    model = transformers_lib.DeformableDetrForObjectDetection(config).double().eval()
    _noise_(model.state_dict(), 5, "model.backbone.")
    model.save_pretrained(tmp_path / "resnet")
    ckpt = hf.read_hf_folder(tmp_path / "resnet")
    ours = build_model(recipe_for_checkpoint(ckpt)).double().eval()
    load_state_dict(ours, ckpt["model"], "transformers ResNet")
    image = _picture()
    logits, boxes = _hf_outputs(model, image)
    ours_logits, ours_boxes = _ddetr_outputs(ours, image)
    assert _max_diff(ours_logits, logits) <= LOGITS_TOL
    assert _max_diff(ours_boxes, boxes) <= BOXES_TOL


@pytest.mark.slow
@transformers_marks
def test_official_reference_to_hf(transformers_lib, tmp_path, capsys):
    """The official release's plain layout (synthetic weights) converted --to hf gives the
    official model's recorded outputs in transformers (tests/data/ref_plain.pt)."""
    from reference_data import normalised_picture, official_args, official_state_dict, reference

    torch.save({"model": official_state_dict("plain"), "args": official_args("plain")},
               tmp_path / "official.pth")  # fmt: skip
    convert(tmp_path / "official.pth", tmp_path / "hf", "hf")
    theirs = transformers_lib.DeformableDetrForObjectDetection.from_pretrained(
        tmp_path / "hf", dtype=torch.float64
    ).eval()
    image = normalised_picture("a.png", torch.float64)
    logits, boxes = _hf_outputs(theirs, image)
    expected = reference()["single"]["a.png"]
    dl = _max_diff(logits, expected["pred_logits"])
    db = _max_diff(boxes, expected["pred_boxes"])
    with capsys.disabled():
        print(
            f"\n[official reference -> hf] transformers vs official, float64: |logits| "
            f"{dl:.2e}, |boxes| {db:.2e}"
        )
    assert dl <= LOGITS_TOL and db <= BOXES_TOL


_LOAD_WITHOUT_TIMM = """
import sys
sys.modules["timm"] = None  # as if timm were not installed
import torch
import transformers
assert not transformers.utils.is_timm_available()
folder, picture, out = sys.argv[1:]
model = transformers.DeformableDetrForObjectDetection.from_pretrained(folder).double().eval()
image = torch.load(picture)
with torch.inference_mode():
    outputs = model(pixel_values=image[None], pixel_mask=torch.ones(image.shape[1:])[None].long())
torch.save({"logits": outputs.logits[0], "boxes": outputs.pred_boxes[0]}, out)
"""


@transformers_marks
def test_a_converted_folder_loads_in_transformers_without_timm(tmp_path, capsys):
    """`--to hf` writes transformers' own ResNet backbone: from_pretrained needs no timm, and
    gives ddetr's outputs (float64)."""
    import subprocess

    pytest.importorskip("transformers")
    from ddetr_cli.weights import save_checkpoint

    model, recipe = _ddetr_model("two_stage", torch.float64, seed=4)
    convert(save_checkpoint(tmp_path / "m.pth", model, recipe), tmp_path / "hf", "hf")
    torch.save(_picture(), tmp_path / "picture.pt")
    command = [sys.executable, "-c", _LOAD_WITHOUT_TIMM, str(tmp_path / "hf"),
               str(tmp_path / "picture.pt"), str(tmp_path / "out.pt")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")
    logits, boxes = _ddetr_outputs(model, _picture())
    dl, db = _max_diff(logits, theirs["logits"]), _max_diff(boxes, theirs["boxes"])
    with capsys.disabled():
        print(f"\n[--to hf, no timm] transformers vs ddetr, float64: |logits| {dl:.2e}, "
              f"|boxes| {db:.2e}")  # fmt: skip
    assert dl <= LOGITS_TOL and db <= BOXES_TOL
