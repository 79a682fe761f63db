"""Packaged recipes (#9): by name from the wheel, `recipe list|show|copy`, `base: NAME`, and
checkpoints of earlier versions that keep loading through recipe migrations."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ddetr_cli.cli import app
from ddetr_cli.errors import DdetrError
from ddetr_cli.recipe import RECIPE_SCHEMA, load_recipe, migrate
from ddetr_cli.recipe.library import PACKAGED_DIR, describe, packaged_recipes, resolve_recipe
from ddetr_cli.weights import load_model, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
runner = CliRunner()


def test_the_package_carries_the_repository_recipes():
    """One source: ddetr_cli/recipes is the top-level recipes/ folder (the wheel copies it)."""
    assert PACKAGED_DIR.resolve() == (ROOT / "recipes").resolve()
    assert {"deformable_detr", "refine", "two_stage", "single_scale", "shapes"} <= set(
        packaged_recipes()
    )
    assert describe(packaged_recipes()["refine"]).coco_ap == 46.2


def test_a_name_means_the_packaged_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_recipe("refine")["model"]["with_box_refine"] is True
    assert load_recipe("two_stage")["model"]["two_stage"] is True


def test_a_missing_recipes_path_means_the_packaged_one_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        path = resolve_recipe("recipes/refine.yaml")
    assert path == packaged_recipes()["refine"]
    assert "using the packaged recipe 'refine'" in caplog.text


def test_an_existing_path_is_read_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "refine").write_text("model:\n  num_queries: 7\n")
    assert load_recipe("refine")["model"]["num_queries"] == 7


def test_unknown_names_list_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DdetrError, match=r"recipe 'refin' not found: .*refine"):
        resolve_recipe("refin")
    with pytest.raises(DdetrError, match=r"recipe file not found: mine/x.yaml"):
        resolve_recipe("mine/x.yaml")


def test_base_names_a_packaged_recipe(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: two_stage\ntrain:\n  epochs: 3\n")
    recipe = load_recipe(mine)
    assert recipe["model"]["two_stage"] and recipe["train"]["epochs"] == 3


def test_recipe_copy_list_show(tmp_path):
    target = tmp_path / "my.yaml"
    result = runner.invoke(app, ["recipe", "copy", "refine", str(target)])
    assert result.exit_code == 0, result.output
    assert load_recipe(target) == load_recipe("refine")  # base: deformable_detr still resolves
    again = runner.invoke(app, ["recipe", "copy", "refine", str(target)])
    assert again.exit_code == 1 and "--force" in again.stderr
    listing = runner.invoke(app, ["recipe", "list"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0
    assert "two_stage" in listing.stdout and "46.9" in listing.stdout
    shown = runner.invoke(app, ["recipe", "show", "refine", "train.epochs=12"])
    assert shown.exit_code == 0 and "epochs: 12" in shown.stdout


def test_train_help_by_recipe_name():
    result = runner.invoke(app, ["train", "refine", "--help"])
    assert result.exit_code == 0 and "Usage" in result.stdout


# ----------------------------------------------------------------------------- old checkpoints

OLD = DATA / "checkpoint_v0.1.0.pth"  # written by ddetr 0.1.0: never regenerate it


def test_a_checkpoint_of_version_0_1_0_loads_and_computes_the_same():
    assert read_checkpoint(OLD)["version"] == "0.1.0"
    model, recipe = load_model(OLD, overrides=["model.attention_backend=reference"])
    expected = torch.load(DATA / "checkpoint_v0.1.0_outputs.pt", weights_only=True)
    with torch.no_grad():
        out = model([expected["image"]])
    torch.testing.assert_close(out["pred_logits"], expected["pred_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["pred_boxes"], expected["pred_boxes"], atol=1e-5, rtol=0)
    assert recipe["model"]["class_names"] == ["circle", "rectangle", "triangle"]


def test_stored_recipes_are_migrated(monkeypatch):
    """A later version that renames a key bumps RECIPE_SCHEMA and adds a migration: old
    checkpoints then load through it."""

    def rename(recipe):
        recipe["model"]["num_queries"] = recipe["model"].pop("queries_renamed_later", 5)
        return recipe

    monkeypatch.setattr(migrate, "RECIPE_SCHEMA", 2)
    monkeypatch.setattr(migrate, "MIGRATIONS", {1: rename})
    migrated = migrate.migrate_recipe({"model": {"queries_renamed_later": 9}}, 1)
    assert migrated == {"model": {"num_queries": 9}}
    with pytest.raises(DdetrError, match="written by a newer ddetr"):
        migrate.migrate_recipe({}, 3)


def test_new_checkpoints_store_the_schema(tmp_path):
    from ddetr_cli.weights import save_checkpoint

    model, recipe = load_model(OLD)
    path = save_checkpoint(tmp_path / "c.pth", model, recipe)
    assert read_checkpoint(path)["recipe_schema"] == RECIPE_SCHEMA


def test_the_0_1_0_import_of_the_evaluation_transform_still_works():
    from ddetr_cli.data import transforms

    with pytest.warns(DeprecationWarning, match=r"moved to ddetr_cli\.data\.transforms\."):
        from ddetr_cli.images import eval_size, eval_transform

    assert eval_transform is transforms.eval_transform and eval_size is transforms.eval_size
