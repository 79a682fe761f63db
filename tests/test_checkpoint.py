"""Checkpoint files: official layouts load with every key used; bad files give one clear line."""

from __future__ import annotations

import pickle
import urllib.error

import pytest
import torch
import torchvision
from reference_data import VARIANT_OVERRIDES, official_args, official_state_dict

from ddetr_cli.data.class_names import COCO_CLASS_NAMES
from ddetr_cli.errors import DdetrError
from ddetr_cli.model import build_model
from ddetr_cli.recipe import load_recipe
from ddetr_cli.weights import load_model, load_weights, read_checkpoint, save_checkpoint

TINY = [
    "model.backbone=resnet18",
    "model.hidden_dim=64",
    "model.dim_feedforward=128",
    "model.enc_layers=1",
    "model.dec_layers=2",
    "model.num_queries=10",
    "model.num_classes=4",
]


def _write_official(path, variant, with_args=True):
    state_dict = official_state_dict(variant)
    # Keys a FLOPs profiler leaves in some released files; they must be ignored.
    state_dict["transformer.total_ops"] = torch.zeros(1, dtype=torch.float64)
    state_dict["total_params"] = torch.zeros(1, dtype=torch.float64)
    ckpt = {"model": state_dict, "optimizer": {"state": {}}, "lr_scheduler": {}, "epoch": 49}
    if with_args:
        ckpt["args"] = official_args(variant)
    torch.save(ckpt, path)
    return path


def _assert_same_weights(model, variant):
    expected = official_state_dict(variant)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("variant", ["plain", "refine", "two_stage", "single_scale"])
def test_official_checkpoint_loads_with_args(tmp_path, variant):
    path = _write_official(tmp_path / f"r50_{variant}.pth", variant)
    model, recipe = load_model(path)
    _assert_same_weights(model, variant)
    expected = load_recipe(None, VARIANT_OVERRIDES[variant])["model"]
    for key in ("num_feature_levels", "with_box_refine", "two_stage", "num_queries", "backbone"):
        assert recipe["model"][key] == expected[key]
    assert recipe["model"]["class_names"] == list(COCO_CLASS_NAMES)
    assert not model.training


@pytest.mark.parametrize("variant", ["plain", "two_stage"])
def test_official_layout_without_args_is_inferred_from_keys(tmp_path, variant):
    path = _write_official(tmp_path / "bare.pth", variant, with_args=False)
    model, recipe = load_model(path)
    _assert_same_weights(model, variant)
    assert recipe["model"]["two_stage"] == (variant == "two_stage")


def test_bare_state_dict_and_ddp_prefix(tmp_path):
    state_dict = {f"module.{k}": v for k, v in official_state_dict("single_scale").items()}
    torch.save(state_dict, tmp_path / "ddp.pth")
    model, recipe = load_model(tmp_path / "ddp.pth")
    assert recipe["model"]["num_feature_levels"] == 1
    _assert_same_weights(model, "single_scale")


def test_own_checkpoint_round_trip_keeps_the_recipe(tmp_path):
    recipe = load_recipe(None, [*TINY, "model.class_names=[a, b, c, d]"])
    model = build_model(recipe)
    path = save_checkpoint(tmp_path / "run" / "ckpt.pth", model, recipe, epoch=3)
    assert read_checkpoint(path)["epoch"] == 3
    loaded, loaded_recipe = load_model(path, overrides=["model.attention_backend=reference"])
    assert loaded_recipe["model"]["class_names"] == ["a", "b", "c", "d"]
    assert loaded_recipe["model"]["attention_backend"] == "reference"
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    fresh = build_model(recipe)
    load_weights(fresh, path)
    assert torch.equal(fresh.query_embed.weight, model.query_embed.weight)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]  # no temp files left


def test_save_is_atomic(tmp_path, monkeypatch):
    recipe = load_recipe(None, TINY)
    model = build_model(recipe)
    path = save_checkpoint(tmp_path / "ckpt.pth", model, recipe, epoch=1)
    good = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, recipe, epoch=2)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_architecture_mismatch_is_one_clear_line(tmp_path):
    path = _write_official(tmp_path / "plain.pth", "plain")
    recipe = load_recipe(None, VARIANT_OVERRIDES["two_stage"])
    with pytest.raises(DdetrError, match="does not fit this model architecture") as info:
        load_model(path, recipe)
    assert "\n" not in str(info.value) and "plain.pth" in str(info.value)


def _bad_files(tmp_path):
    real = tmp_path / "real.pth"
    _write_official(real, "single_scale")
    data = real.read_bytes()
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 3])
    with open(tmp_path / "list.pth", "wb") as f:
        pickle.dump([1, 2, 3], f)
    torch.save({"epoch": 3}, tmp_path / "no_model.pth")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pth")
    (tmp_path / "folder.pth").mkdir()
    return ["missing.pth", "empty.pth", "text.pth", "truncated.pth", "list.pth", "no_model.pth",
            "resnet.pth", "folder.pth"]  # fmt: skip


# What the one line says each bad file is, after its name.
_BAD_FILE_KINDS = {
    "missing.pth": ": no such file",
    "empty.pth": " is an empty file, not weights",
    "text.pth": " is plain text, not weights",
    "truncated.pth": " is not a readable checkpoint (a zip archive: ",
    "list.pth": " is not a checkpoint ddetr reads: it is a pickle, but not a tensor checkpoint",
    "no_model.pth": " is not a Deformable DETR checkpoint (no 'model' state dict)",
    "resnet.pth": " is not a Deformable DETR checkpoint (no transformer weights)",
    "folder.pth": " is a folder but neither a run folder",
}


def test_bad_files_give_one_line_naming_the_file(tmp_path):
    assert _bad_files(tmp_path) == list(_BAD_FILE_KINDS)
    for name, kind in _BAD_FILE_KINDS.items():
        with pytest.raises(DdetrError) as info:
            load_model(tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name}{kind}") and "\n" not in message, message


def test_offline_pretrained_backbone_says_how_to_proceed(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(DdetrError, match="model.pretrained_backbone=false") as info:
        build_model(load_recipe(None, ["model.pretrained_backbone=true"]))
    assert "resnet50" in str(info.value)


def test_pretrained_backbone_loads_cached_imagenet_weights(monkeypatch):
    reference = torchvision.models.resnet18()
    monkeypatch.setattr(
        torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: reference.state_dict()
    )
    model = build_model(load_recipe(None, [*TINY, "model.pretrained_backbone=true"]))
    assert torch.equal(
        model.backbone[0].body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight
    )
