"""What a first-time user of ``ddetr train`` hits: run folders are never overwritten, --resume
continues the run's own recipe, one plain line per epoch, --device, -w RUN_FOLDER, another
class count when fine-tuning, null class count from the data, Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tiny import TINY_MODEL
from typer.testing import CliRunner

from ddetr_cli.cli import app
from ddetr_cli.errors import DdetrError
from ddetr_cli.recipe import load_recipe
from ddetr_cli.train import engine
from ddetr_cli.train.classes import resolve_classes
from ddetr_cli.weights import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "shapes.yaml"
# One optimiser step per epoch: 2 pictures at batch 2; 1 val picture.
TINY = [
    *TINY_MODEL, "data.shapes.train_images=2", "data.shapes.val_images=1", "train.batch_size=2",
    "model.attention_backend=reference",
]  # fmt: skip
ARGS = [str(RECIPE), *TINY, "train.epochs=1", "--device", "cpu"]
runner = CliRunner()


def _invoke(cwd: Path, args: list[str]):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, args)
    finally:
        os.chdir(old)


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, str]:
    """A finished run in runs/shapes (the recipe's train.output_dir) of a fresh folder."""
    cwd = tmp_path_factory.mktemp("work")
    result = _invoke(cwd, ["train", *ARGS])
    assert result.exit_code == 0, result.output
    return cwd, result.output


@pytest.mark.slow
def test_device_option_and_one_plain_line_per_epoch(first_run):
    cwd, output = first_run
    assert (cwd / "runs" / "shapes" / "checkpoint_best.pth").is_file()
    lines = output.splitlines()
    epoch = [line for line in lines if line.startswith("epoch 1/1")]
    assert len(epoch) == 1 and re.search(r"loss \d+\.\d{3}.*val AP \d\.\d{3}", epoch[0]), output
    assert "it/s" not in output  # no progress bar without a terminal
    assert "data: train 2 pictures; val 1 pictures" in output
    assert "3 classes (circle, rectangle, triangle)" in output
    assert "batch 2 per optimiser step = 2 pictures x 1 accumulated x 1 process" in output
    rates = load_recipe(RECIPE)["train"]
    assert f"learning rates: rest {rates['lr']:.2e}, backbone {rates['lr_backbone']:.2e}" in output


@pytest.mark.slow
def test_the_summary_says_whether_the_data_or_the_model_takes_the_time(first_run):
    _, output = first_run
    assert re.search(r"s per step .*\d\.\d{3} training \+ \d\.\d{3} waiting for data", output)


@pytest.mark.slow
def test_a_new_run_never_overwrites_a_finished_one(first_run):
    cwd, _ = first_run
    old = cwd / "runs" / "shapes"
    before = {name: (old / name).read_bytes() for name in ("checkpoint_best.pth", "metrics.jsonl")}
    result = _invoke(cwd, ["train", *ARGS])
    assert result.exit_code == 0, result.output
    assert "this run: runs/shapes2" in result.output
    assert (cwd / "runs" / "shapes2" / "checkpoint_best.pth").is_file()
    assert yaml.safe_load((cwd / "runs/shapes2/recipe.yaml").read_text())["train"][
        "output_dir"
    ] == str(Path("runs/shapes2"))
    for name, data in before.items():
        assert (old / name).read_bytes() == data, name
    # A folder the user names that holds a run is refused in one line.
    result = _invoke(cwd, ["train", *ARGS, "train.output_dir=runs/shapes"])
    assert result.exit_code == 1
    (line,) = _errors(result.output)
    assert "runs/shapes already holds a run" in line and "--resume runs/shapes" in line


@pytest.mark.slow
def test_resume_continues_the_runs_own_recipe(first_run):
    cwd, _ = first_run
    shutil.copytree(cwd / "runs" / "shapes", cwd / "mine")
    result = _invoke(cwd, ["train", "--resume", "mine", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    assert "resuming mine/checkpoint_last.pth with the run's recipe and train.epochs=2" in (
        result.output
    )
    assert [line[:9] for line in result.output.splitlines() if line.startswith("epoch ")] == [
        "epoch 2/2"
    ]
    ckpt = read_checkpoint(cwd / "mine" / "checkpoint_last.pth")
    assert ckpt["epoch"] == 2 and ckpt["recipe"]["model"]["hidden_dim"] == 32  # the run's own
    assert ckpt["recipe"]["train"]["output_dir"] == "mine"
    # --resume-from without a recipe argument, an override right after it.
    result = _invoke(cwd, ["train", "--resume-from", "mine", "train.epochs=3"])
    assert result.exit_code == 0, result.output
    assert read_checkpoint(cwd / "mine" / "checkpoint_last.pth")["epoch"] == 3
    # The existing interface: a recipe whose train.output_dir is the run, and --resume.
    result = _invoke(cwd, ["train", *ARGS, "--resume", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    assert "resuming runs/shapes/checkpoint_last.pth" in result.output
    assert read_checkpoint(cwd / "runs" / "shapes" / "checkpoint_last.pth")["epoch"] == 2
    # A recipe file that differs from the run's is not silently swapped in.
    result = _invoke(cwd, ["train", str(RECIPE), "--resume-from", "mine"])
    assert result.exit_code == 2
    (line,) = _errors(result.output)
    assert "differs from the recipe of the run in mine" in line and "model.hidden_dim" in line


@pytest.mark.slow
def test_resuming_a_finished_run_says_how_to_extend_it_and_trains_nothing(first_run):
    cwd, _ = first_run
    shutil.copytree(cwd / "runs" / "shapes", cwd / "done")
    before = {p.name: p.read_bytes() for p in (cwd / "done").iterdir()}
    done = read_checkpoint(cwd / "done" / "checkpoint_last.pth")["epoch"]  # other tests extend it
    result = _invoke(cwd, ["train", "--resume", "done"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"nothing to train: the run in done has done {done} epochs (train.epochs={done}); extend "
        f"it with: ddetr train --resume done train.epochs=N (N > {done})"
    ]
    assert {p.name: p.read_bytes() for p in (cwd / "done").iterdir()} == before


@pytest.mark.slow
def test_fine_tuning_from_a_run_folder_with_another_class_count(first_run):
    cwd, _ = first_run
    args = ["train", *ARGS, "model.num_classes=5", "-w", "runs/shapes", "train.output_dir=five"]
    result = _invoke(cwd, args)
    assert result.exit_code == 0, result.output
    assert "dropped the recipe's 3 class names" in result.output
    assert "checkpoint_best.pth; re-initialised the class heads (3 -> 5 classes)" in result.output
    names = yaml.safe_load((cwd / "five" / "recipe.yaml").read_text())["model"]["class_names"]
    assert names == ["circle", "rectangle", "triangle", "N/A", "N/A"]


def test_null_class_count_comes_from_the_data():
    recipe = load_recipe(RECIPE, ["model.num_classes=null", "model.class_names=null"])
    assert recipe["model"]["num_classes"] is None
    splits = SimpleNamespace(num_classes=4, class_names=["a", "b", "N/A", "d"])
    resolve_classes(recipe, splits)
    assert recipe["model"]["num_classes"] == 4 and recipe["model"]["class_names"][3] == "d"
    two = load_recipe(RECIPE, ["model.num_classes=2", "model.class_names=null"])
    with pytest.raises(DdetrError, match=r"set model.num_classes=4 \(or null: from the data\)"):
        resolve_classes(two, splits)


def test_ctrl_c_saves_the_last_complete_step(tmp_path, monkeypatch):
    real = engine.train_step
    calls = []

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", interrupted_step)
    recipe = load_recipe(RECIPE, [*TINY, "train.batch_size=1", f"train.output_dir={tmp_path}"])
    with pytest.raises(KeyboardInterrupt):
        engine.train(recipe, progress=False)
    ckpt = read_checkpoint(tmp_path / "checkpoint_last.pth")
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (0, 1, 1)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written atomically
    with contextlib.suppress(FileNotFoundError):
        assert not (tmp_path / "checkpoint_best.pth").exists()


@pytest.mark.parametrize("device", ["cuda", "tpu", "cuda:0"])
def test_a_device_train_cannot_use_exits_2_as_everywhere(tmp_path, monkeypatch, device):
    """`--device cuda` on a machine without CUDA is a usage mistake (exit 2), as in predict."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [str(RECIPE), *TINY, "train.epochs=1", f"train.output_dir={tmp_path / 'run'}"]
    result = _invoke(tmp_path, ["train", *args, "--device", device])
    assert result.exit_code == 2, result.output
    (line,) = _errors(result.output)
    assert f"--device {device}" in line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_first_kernel_build_is_announced(tmp_path, monkeypatch):
    """The kernel's first compile (~16 s on a CPU) used to pass in silence before step 1."""
    from ddetr_cli.ops import backends, build, kernel

    monkeypatch.setenv("DDETR_CACHE_DIR", str(tmp_path / "cache"))  # nothing built there
    monkeypatch.delenv("DDETR_DISABLE_KERNEL", raising=False)
    monkeypatch.setattr(kernel, "_status", {})
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setattr(build, "_check_toolchain", lambda device_type: {})
    compiled = []

    def no_compiler(device_type, build_dir, tools):  # the test does not wait for a compiler
        compiled.append(build_dir)
        raise build.KernelBuildError(f"{device_type} build failed: not in this test")

    monkeypatch.setattr(build, "_compile", no_compiler)
    backends.clear_cache()
    run = ["train.max_steps=1", f"train.output_dir={tmp_path / 'run'}", "--device", "cpu"]
    try:
        result = _invoke(tmp_path, ["train", *ARGS, "model.attention_backend=auto", *run])
        quiet = _invoke(tmp_path, ["train", *ARGS, *run[:1], f"train.output_dir={tmp_path / 'r'}"])
    finally:
        backends.clear_cache()
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("compiling")]
    assert line.startswith("compiling the cpu attention kernel") and str(compiled[0]) in line
    assert quiet.exit_code == 0 and "compiling" not in quiet.output  # the reference backend
