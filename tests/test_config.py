"""Recipes: inheritance, overrides, strict validation, the shipped recipe files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from ddetr_cli.errors import DdetrError
from ddetr_cli.recipe import (
    DEFAULTS,
    apply_overrides,
    dump_recipe,
    load_recipe,
    validate_recipe,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_alone():
    recipe = load_recipe(None)
    assert recipe == DEFAULTS
    assert recipe is not DEFAULTS
    recipe["model"]["nheads"] = 1
    assert DEFAULTS["model"]["nheads"] == 8  # callers get a copy


def test_base_inheritance_is_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", "model:\n  hidden_dim: 128\n  nheads: 4\ntrain:\n  epochs: 3\n")
    write(tmp_path / "sub" / "mid.yaml", "base: ../base.yaml\nmodel:\n  nheads: 8\n")
    child = write(tmp_path / "sub" / "child.yaml", "base: mid.yaml\ntrain:\n  lr: 1.0e-3\n")
    recipe = load_recipe(child)
    assert recipe["model"]["hidden_dim"] == 128  # from the grandparent
    assert recipe["model"]["nheads"] == 8  # the nearer file wins
    assert recipe["train"]["epochs"] == 3
    assert recipe["train"]["lr"] == 1.0e-3
    assert recipe["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]  # default filled
    assert "base" not in recipe


def test_base_cycle_is_detected(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(DdetrError, match=r"cycle \(a.yaml -> b.yaml -> a.yaml\)"):
        load_recipe(tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(DdetrError, match="cycle"):
        load_recipe(tmp_path / "self.yaml")


def test_missing_base(tmp_path):
    path = write(tmp_path / "a.yaml", "base: nowhere.yaml\n")
    with pytest.raises(DdetrError, match=r"a.yaml: base recipe 'nowhere.yaml' not found"):
        load_recipe(path)


def test_overrides_are_yaml_values():
    recipe = load_recipe(
        None,
        [
            "train.epochs=12",
            "train.lr=2e-4",  # PyYAML alone would read this as a string
            "model.with_box_refine=true",
            "model.num_classes=3",
            "model.class_names=[cat, dog, bird]",
            "data.root=/data/my coco",
            "train.amp=off",  # YAML 1.1 would read this as False
            "train.output_dir=2024",  # a folder named 2024, not an int
            "model.dropout=0",  # an int where a float is expected
        ],
    )
    assert recipe["train"]["epochs"] == 12
    assert recipe["train"]["lr"] == pytest.approx(2e-4)
    assert recipe["model"]["with_box_refine"] is True
    assert recipe["model"]["class_names"] == ["cat", "dog", "bird"]
    assert recipe["data"]["root"] == "/data/my coco"
    assert recipe["train"]["amp"] == "off"
    assert recipe["train"]["output_dir"] == "2024"
    assert recipe["model"]["dropout"] == 0.0 and isinstance(recipe["model"]["dropout"], float)


def test_overrides_beat_the_file_and_the_last_one_wins(tmp_path):
    path = write(tmp_path / "r.yaml", "train:\n  epochs: 5\n")
    recipe = load_recipe(path, ["train.epochs=7", "train.epochs=9"])
    assert recipe["train"]["epochs"] == 9


def test_unquoted_off_in_a_file_is_a_string(tmp_path):
    path = write(tmp_path / "r.yaml", "train:\n  amp: off\n")
    assert load_recipe(path)["train"]["amp"] == "off"


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("model.nheds=4", "model.nheads"),
        ("modle.nheads=4", "model.nheads"),
        ("nheads=4", "model.nheads"),  # forgot the section
        ("train.learning_rate=1", None),
    ],
)
def test_unknown_override_key_suggests_the_closest(override, suggestion):
    with pytest.raises(DdetrError) as info:
        load_recipe(None, [override])
    message = str(info.value)
    assert f"override '{override}'" in message
    assert f"unknown key '{override.split('=')[0]}'" in message
    if suggestion:
        assert f"did you mean '{suggestion}'" in message


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "r.yaml", "model:\n  num_querys: 100\n")
    with pytest.raises(DdetrError) as info:
        load_recipe(path)
    assert str(info.value) == (
        f"{path}: unknown key 'model.num_querys' (did you mean 'model.num_queries'?)"
    )


def test_every_unknown_key_of_a_file_is_reported_at_once(tmp_path):
    text = "model:\n  num_querys: 100\n  nheds: 4\ntrain:\n  epoch: 3\n  lr: 1.0e-4\n"
    path = write(tmp_path / "r.yaml", text)
    with pytest.raises(DdetrError) as info:
        load_recipe(path)
    assert str(info.value) == (
        f"{path}: 3 unknown keys: 'model.num_querys' (did you mean 'model.num_queries'?), "
        "'model.nheds' (did you mean 'model.nheads'?), 'train.epoch' (did you mean "
        "'train.epochs'?)"
    )


def test_every_unknown_override_key_is_reported_at_once():
    overrides = ["model.nheds=4", "train.epochs=3", "train.epoch=3", "lr=1"]
    with pytest.raises(DdetrError) as info:
        load_recipe(None, overrides)
    assert str(info.value) == (
        "overrides 'model.nheds=4', 'train.epoch=3', 'lr=1': 3 unknown keys: 'model.nheds' (did "
        "you mean 'model.nheads'?), 'train.epoch' (did you mean 'train.epochs'?), 'lr' (did you "
        "mean 'train.lr'?)"
    )


def test_unknown_key_in_a_base_names_the_base(tmp_path):
    write(tmp_path / "base.yaml", "trian:\n  epochs: 1\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\n")
    with pytest.raises(DdetrError, match=r"base.yaml: unknown key 'trian' \(did you mean 'train'"):
        load_recipe(child)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.num_classes=abc", "model.num_classes must be an integer, got 'abc'"),
        ("model.num_classes=2.5", "model.num_classes must be an integer"),
        ("model.num_classes=true", "model.num_classes must be an integer"),
        ("model.two_stage=1", "model.two_stage must be true or false"),
        ("model.two_stage=yes", "model.two_stage must be true or false"),
        ("train.lr=fast", "train.lr must be a number"),
        ("model.class_names=[1, 2]", "model.class_names must be a list of strings"),
        ("model.class_names=cat", "model.class_names must be a list of strings"),
        ("model=3", "model must be a mapping"),
    ],
)
def test_wrong_types(override, needle):
    with pytest.raises(DdetrError, match=needle.replace("[", r"\[")):
        load_recipe(None, [override])


def test_wrong_type_in_a_file(tmp_path):
    path = write(tmp_path / "r.yaml", "train:\n  epochs: ten\n")
    with pytest.raises(DdetrError, match=rf"{path.name}: train.epochs must be an integer"):
        load_recipe(path)
    path = write(tmp_path / "s.yaml", "train: 3\n")
    with pytest.raises(DdetrError, match="train must be a mapping"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.num_classes=0", "model.num_classes must be >= 1"),
        ("model.num_feature_levels=0", "model.num_feature_levels must be >= 1"),
        ("model.hidden_dim=100", "model.hidden_dim (100) must be divisible by model.nheads (8)"),
        ("model.attention_backend=cuda", "model.attention_backend must be one of auto, reference"),
        ("model.backbone=resnet152", "model.backbone must be one of resnet18"),
        ("model.backbone=resnet5", "did you mean 'resnet50'"),
        ("model.backbone_norm=group", "model.backbone_norm must be one of frozen, batch"),
        ("train.amp=fp8", "train.amp must be one of off, bf16, fp16"),
        ("model.dropout=1.0", "model.dropout must be in [0, 1)"),
        ("loss.focal_alpha=1.5", "loss.focal_alpha must be in [0, 1], got 1.5"),
        ("train.ema=1", "train.ema must be in [0, 1), got 1.0"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("train.lr=-1", "train.lr must be >= 0"),
        ("model.class_names=[a, b]", "model.class_names has 2 names but model.num_classes is 91"),
    ],
)
def test_invalid_values(override, needle):
    with pytest.raises(DdetrError) as info:
        load_recipe(None, [override])
    assert needle in str(info.value)


def test_two_stage_requires_box_refine(tmp_path):
    path = write(tmp_path / "r.yaml", "model:\n  two_stage: true\n")
    with pytest.raises(DdetrError, match=r"r.yaml.*two_stage requires model.with_box_refine"):
        load_recipe(path)
    assert load_recipe(path, ["model.with_box_refine=true"])["model"]["two_stage"] is True
    with pytest.raises(DdetrError, match="two_stage requires"):
        load_recipe(RECIPES / "two_stage.yaml", ["model.with_box_refine=false"])


@pytest.mark.parametrize("override", ["epochs", "=3", ""])
def test_override_syntax_error(override):
    with pytest.raises(DdetrError, match="expected dotted key=value"):
        load_recipe(None, [override])


def test_override_with_bad_yaml():
    with pytest.raises(DdetrError, match="cannot parse the value as YAML"):
        load_recipe(None, ["model.class_names=[a, b"])


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model: [unclosed\n", "invalid YAML"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("just a string\n", "the top level must be a mapping"),
    ],
)
def test_bad_files(tmp_path, text, needle):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(DdetrError, match=needle) as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DdetrError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(DdetrError, match="is a directory"):
        load_recipe(tmp_path)


def test_empty_file_and_empty_section_are_the_defaults(tmp_path):
    assert load_recipe(write(tmp_path / "e.yaml", "")) == DEFAULTS
    assert load_recipe(write(tmp_path / "s.yaml", "loss:\ntrain:\n")) == DEFAULTS


def test_validate_recipe_fills_and_checks_a_checkpoint_dict():
    partial = {"model": {"num_classes": 2, "class_names": ["a", "b"]}}
    recipe = validate_recipe(partial, "checkpoint x.pth")
    assert recipe["model"]["num_classes"] == 2
    assert recipe["train"] == DEFAULTS["train"]
    with pytest.raises(DdetrError, match="checkpoint x.pth: unknown key 'model.foo'"):
        validate_recipe({"model": {"foo": 1}}, "checkpoint x.pth")
    with pytest.raises(DdetrError, match="must be a mapping"):
        validate_recipe([1, 2])  # type: ignore[arg-type]


def test_apply_overrides_on_a_resolved_recipe():
    recipe = load_recipe(RECIPES / "refine.yaml")
    before = copy.deepcopy(recipe)
    changed = apply_overrides(recipe, ["model.num_detections=50"])
    assert changed["model"]["num_detections"] == 50
    assert changed["model"]["with_box_refine"] is True
    assert recipe == before  # the input is not modified
    with pytest.raises(DdetrError, match="did you mean 'model.num_detections'"):
        apply_overrides(recipe, ["model.num_detection=50"])


def test_dump_and_reload_round_trip(tmp_path):
    recipe = load_recipe(RECIPES / "two_stage.yaml", ["model.class_names=null", "train.amp=off"])
    path = tmp_path / "out" / "recipe.yaml"
    dump_recipe(recipe, path)
    assert load_recipe(path) == recipe
    assert not [p for p in path.parent.iterdir() if p.name != "recipe.yaml"]  # no temp files


SHIPPED = {
    "deformable_detr.yaml": dict(num_feature_levels=4, with_box_refine=False, two_stage=False),
    "refine.yaml": dict(num_feature_levels=4, with_box_refine=True, two_stage=False),
    "two_stage.yaml": dict(num_feature_levels=4, with_box_refine=True, two_stage=True),
    "single_scale.yaml": dict(num_feature_levels=1, dilation=False),
    "single_scale_dc5.yaml": dict(num_feature_levels=1, dilation=True),
}


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_recipe_file_loads(name):
    classes = load_recipe(RECIPES / name)["model"]["num_classes"]
    if name == "finetune.yaml":
        assert classes is None  # from the data
    else:
        assert classes >= 1


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_official_recipes_match_the_official_configs(name):
    recipe = load_recipe(RECIPES / name)
    model = recipe["model"]
    for key, value in SHIPPED[name].items():
        assert model[key] == value, key
    assert model["pretrained_backbone"] is True
    assert model["backbone"] == "resnet50" and model["num_classes"] == 91
    assert (model["num_queries"], model["hidden_dim"], model["enc_n_points"]) == (300, 256, 4)
    assert (recipe["train"]["epochs"], recipe["train"]["lr_drop"]) == (50, 40)
