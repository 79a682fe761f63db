"""One rule for data paths (#18.3): relative ones in a recipe file mean its folder, on the
command line the current folder; a run stores them absolute, so it evaluates and resumes from
any folder; a stored path that is gone is one line naming the override that fixes it. And a
data path the format in force does not read is an error, never ignored (#24.3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from fake_datasets import ultralytics_yolo
from tiny import TINY_MODEL
from typer.testing import CliRunner

from ddetr_cli.cli import app
from ddetr_cli.data import build_datasets, data_classes
from ddetr_cli.data.convert import write_shapes_coco
from ddetr_cli.data.sources import load_source
from ddetr_cli.errors import DdetrError
from ddetr_cli.recipe import DATA_PATH_KEYS, load_recipe, load_run_recipe
from ddetr_cli.recipe.library import packaged_recipes
from ddetr_cli.weights import read_checkpoint

runner = CliRunner()


def _data_paths(recipe: dict) -> dict[str, str | None]:
    data = recipe["data"]
    return {key: (data[key.split(".")[1]] if key.count(".") == 1
                  else data[key.split(".")[1]][key.split(".")[2]])
            for key in DATA_PATH_KEYS}  # fmt: skip


def test_relative_paths_in_a_recipe_file_mean_the_files_folder(tmp_path, monkeypatch):
    (tmp_path / "recipes" / "sub").mkdir(parents=True)
    (tmp_path / "recipes" / "base.yaml").write_text(
        "data:\n  val:\n    images: ../coco/val2017\n    annotations: ../coco/val.json\n"
    )
    mine = tmp_path / "recipes" / "sub" / "mine.yaml"
    mine.write_text("base: ../base.yaml\ndata:\n  root: ../../data/mine\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert _data_paths(load_recipe(mine)) == {
        "data.root": str(tmp_path / "data" / "mine"),
        "data.train.images": None,
        "data.train.annotations": None,
        "data.val.images": str(tmp_path / "coco" / "val2017"),  # the base file's folder
        "data.val.annotations": str(tmp_path / "coco" / "val.json"),
    }
    # key=value: the current folder; ~ is the home folder; null stays null.
    overridden = load_recipe(mine, ["data.train.images=pictures", "data.train.annotations=~/a.json",
                                    "data.val.images=null"])  # fmt: skip
    paths = _data_paths(overridden)
    assert paths["data.train.images"] == str(tmp_path / "elsewhere" / "pictures")
    assert paths["data.train.annotations"] == os.path.expanduser("~/a.json")
    assert paths["data.val.images"] is None


def test_packaged_recipes_set_no_data_path():
    for name, path in packaged_recipes().items():
        assert set(_data_paths(load_recipe(path)).values()) == {None}, name


def test_recipe_show_prints_the_resolved_paths(tmp_path, monkeypatch):
    (tmp_path / "r.yaml").write_text("data:\n  root: data/mine\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["recipe", "show", "r.yaml", "data.val.images=v"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)["data"]
    assert shown["root"] == str(tmp_path / "data" / "mine")
    assert shown["val"]["images"] == str(tmp_path / "v")


def test_a_runs_recipe_keeps_absolute_paths_and_reads_old_relative_ones_from_here(
    tmp_path, monkeypatch
):
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("data:\n  root: shapes_coco\n  format: coco\n")  # ddetr 0.1
    monkeypatch.chdir(tmp_path)
    assert load_run_recipe(run / "recipe.yaml")["data"]["root"] == str(tmp_path / "shapes_coco")
    (run / "recipe.yaml").write_text("data:\n  root: /data/coco\n")
    assert load_run_recipe(run / "recipe.yaml")["data"]["root"] == "/data/coco"


def test_a_stored_path_that_is_gone_names_the_override(tmp_path):
    recipe = load_recipe(None, [f"data.root={tmp_path / 'gone'}"])
    with pytest.raises(DdetrError) as error:
        build_datasets(recipe)
    assert str(error.value) == (
        f"data.root: no such folder: {tmp_path / 'gone'} (moved? set data.root=PATH to where "
        "it is now)"
    )
    recipe = load_recipe(None, [f"data.val.images={tmp_path}", "data.val.annotations=gone.json"])
    with pytest.raises(DdetrError, match=r"^data.val.annotations: no such file: .*gone.json "
                       r"\(moved\? set data.val.annotations=PATH"):  # fmt: skip
        build_datasets(recipe, train=False)


# --- a data path the format does not read (#24.3) --------------------------------------------


def test_data_root_with_the_builtin_shapes_is_refused(tmp_path):
    root = ultralytics_yolo(tmp_path / "yolo")
    recipe = load_recipe("shapes", [f"data.root={root}"])
    expected = (
        f"data.root is set ({root}), but data.format is shapes, which does not read it (the "
        "built-in pictures are generated: no files): set data.format=auto (the layout of "
        "data.root decides), or leave data.root out"
    )
    with pytest.raises(DdetrError) as error:
        build_datasets(recipe)
    assert str(error.value) == expected
    with pytest.raises(DdetrError, match="data.format is shapes"):
        data_classes(recipe)
    # The fix it names reads the YOLO folder.
    fixed = build_datasets(load_recipe("shapes", [f"data.root={root}", "data.format=auto"]))
    assert (len(fixed.train), len(fixed.val)) == (3, 2)


def test_coco_files_with_yolo_or_voc_data_are_refused(tmp_path):
    root = ultralytics_yolo(tmp_path / "yolo")
    files = [f"data.train.images={root}", f"data.train.annotations={root / 'data.yaml'}"]
    with pytest.raises(DdetrError, match=r"^data.train.images is set .*, but data.root holds "
                       r"yolo data \(data.format auto\), which does not read it"):  # fmt: skip
        load_source(load_recipe(None, [f"data.root={root}", *files])["data"])
    recipe = load_recipe(None, [f"data.root={root}", "data.format=voc", *files])
    with pytest.raises(DdetrError, match=r"but data.format is voc, .*set data.format=coco"):
        load_source(recipe["data"])


def test_defaults_and_the_shapes_settings_are_not_refused(tmp_path):
    """Nobody set them: the shapes recipe pointed at a COCO folder (README) reads it."""
    write_shapes_coco(tmp_path / "ds", 2, 1)
    recipe = load_recipe("shapes_transfer", ["data.format=coco", f"data.root={tmp_path / 'ds'}"])
    datasets = build_datasets(recipe)
    assert (len(datasets.train), len(datasets.val)) == (2, 1)


# --- a run from any folder ---------------------------------------------------------------------

TINY = [
    *TINY_MODEL, "train.batch_size=2", "model.attention_backend=reference", "train.epochs=1",
    "data.eval_min_size=64", "data.eval_max_size=64",
]  # fmt: skip


def _invoke(cwd: Path, args: list[str]):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, args)
    finally:
        os.chdir(old)


@pytest.mark.slow
def test_a_run_evaluates_and_resumes_from_any_folder(tmp_path):
    work, other = tmp_path / "work", tmp_path / "other"
    other.mkdir()
    write_shapes_coco(work / "ds", 2, 1)
    args = ["train", "shapes", *TINY, "data.format=coco", "data.root=ds", "--device", "cpu"]
    result = _invoke(work, args)
    assert result.exit_code == 0, result.output
    run = work / "runs" / "shapes"
    stored = yaml.safe_load((run / "recipe.yaml").read_text())["data"]["root"]
    assert stored == str(work / "ds")
    assert read_checkpoint(run / "checkpoint_last.pth")["recipe"]["data"]["root"] == stored
    result = _invoke(other, ["evaluate", "-w", str(run), "-o", "ev"])
    assert result.exit_code == 0, result.output
    result = _invoke(other, ["train", "--resume", str(run), "train.epochs=2"])
    assert result.exit_code == 0, result.output
    assert "data: train 2 pictures, " in result.output
    # The data moved: one line naming the path and the override; the override works.
    (work / "ds").rename(work / "moved")
    result = _invoke(other, ["evaluate", "-w", str(run), "-o", "ev2"])
    assert result.exit_code == 1
    assert f"error: data.root: no such folder: {work / 'ds'} (moved? set data.root=PATH" in (
        result.output
    )
    result = _invoke(other, ["evaluate", "-w", str(run), "-o", "ev3", "data.root=../work/moved"])
    assert result.exit_code == 0, result.output
