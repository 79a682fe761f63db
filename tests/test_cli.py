"""The `ddetr` command line: version, help, one-line errors and exit statuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ddetr_cli import __version__
from ddetr_cli.cli import app

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
runner = CliRunner()


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"ddetr {__version__}"


@pytest.mark.parametrize("command", [[], ["predict"], ["recipe"], ["recipe", "show"]])
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout
    if command != ["recipe"]:
        assert "Examples" in result.stdout and "ddetr " in result.stdout


def test_no_arguments_shows_help():
    result = runner.invoke(app, [])
    assert "Usage" in result.output
    assert "predict" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-t", "1.5"], "--threshold must be between 0 and 1, got 1.5"),
        (["-t", "-0.1"], "--threshold must be between 0 and 1, got -0.1"),
        (["-b", "0"], "--batch-size must be at least 1, got 0"),
        (["--min-size", "0"], "--min-size must be at least 1, got 0"),
    ],
)
def test_bad_numbers_are_one_line_usage_errors(tmp_path, args, needle):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    result = runner.invoke(app, ["predict", str(tmp_path), "-w", str(weights), *args])
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {needle}"]


def test_missing_weights_is_one_line(tmp_path):
    picture = tmp_path / "p.jpg"
    picture.write_bytes(b"x")
    missing = tmp_path / "nope.pth"
    result = runner.invoke(app, ["predict", str(picture), "--weights", str(missing)])
    assert result.exit_code == 1
    assert error_lines(result) == [f"error: --weights {missing}: no such file"]


def test_missing_picture_is_one_line(tmp_path):
    missing = tmp_path / "nope.jpg"
    result = runner.invoke(app, ["predict", str(missing), "-w", str(tmp_path)])
    assert result.exit_code == 1
    assert error_lines(result) == [f"error: {missing}: no such file or folder"]


def test_missing_required_weights_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path)])
    assert result.exit_code == 2
    assert "--weights" in result.output


def test_recipe_show_prints_the_resolved_yaml():
    result = runner.invoke(
        app, ["recipe", "show", str(RECIPES / "two_stage.yaml"), "train.epochs=12"]
    )
    assert result.exit_code == 0, result.output
    recipe = yaml.safe_load(result.stdout)
    assert recipe["model"]["two_stage"] is True and recipe["model"]["with_box_refine"] is True
    assert recipe["train"]["epochs"] == 12
    assert recipe["train"]["amp"] == "off"  # quoted in the output, so it stays a string


def test_recipe_show_typo_is_one_line():
    result = runner.invoke(app, ["recipe", "show", str(RECIPES / "refine.yaml"), "model.nheds=4"])
    assert result.exit_code == 1
    assert error_lines(result) == [
        "error: override 'model.nheds=4': unknown key 'model.nheds' (did you mean 'model.nheads'?)"
    ]


def test_recipe_show_missing_file_is_one_line(tmp_path):
    result = runner.invoke(app, ["recipe", "show", str(tmp_path / "x.yaml")])
    assert result.exit_code == 1
    assert error_lines(result) == [f"error: recipe file not found: {tmp_path / 'x.yaml'}"]


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "recipe", "show", str(tmp_path / "x.yaml")])
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "DdetrError"


def test_keyboard_interrupt_exits_130(monkeypatch):
    import ddetr_cli.recipe as recipe_package

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe_package, "load_recipe", interrupted)
    result = runner.invoke(app, ["recipe", "show", "x.yaml"])
    assert result.exit_code == 130
    assert error_lines(result) == ["error: interrupted"]


def test_python_dash_m_works():
    result = subprocess.run(
        [sys.executable, "-m", "ddetr_cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ddetr {__version__}"


def test_help_does_not_import_torch():
    code = "import sys; from ddetr_cli.cli import app; assert 'torch' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
