"""`ddetr bench --train`: a training step's time, part by part, and what runs between steps."""

from __future__ import annotations

import json

import pytest
from tiny import TINY_MODEL
from typer.testing import CliRunner

from ddetr_cli.bench.train import PARTS, TrainBenchOptions, run_train_bench
from ddetr_cli.cli import app
from ddetr_cli.recipe import load_recipe

# Three batches of 2 pictures: 1 warm-up step and 2 timed ones.
TINY = [
    *TINY_MODEL, "data.shapes.train_images=6", "data.shapes.val_images=3", "train.batch_size=2",
    "model.attention_backend=reference",
]  # fmt: skip
runner = CliRunner()


@pytest.fixture(scope="module")
def report() -> dict:
    options = TrainBenchOptions(steps=2, warmup=1, eval_pictures=2, image_size=(64, 96))
    return run_train_bench(load_recipe("shapes", TINY), options)


def test_every_part_of_the_step_is_timed(report):
    parts = {row["part"]: row for row in report["parts"]}
    expected = [name for name, _ in PARTS]  # the demo recipe averages the weights (train.ema)
    assert list(parts) == expected
    assert all(row["median_ms"] >= 0 for row in report["parts"])
    step = report["step_ms"]
    assert step > 0 and parts["step"]["share_of_step"] == pytest.approx(1.0)
    assert parts["forward"]["median_ms"] + parts["backward"]["median_ms"] < step
    forward = sum(parts[f"- {p}"]["median_ms"] for p in ("backbone", "encoder", "decoder", "rest"))
    assert forward == pytest.approx(parts["forward"]["median_ms"], rel=0.5)
    assert parts["data"]["share_of_step"] is None
    assert report["protocol"]["image_size"] == [64, 96]
    assert report["protocol"]["batch_size"] == 2 and report["protocol"]["timed_steps"] == 2
    assert report["model"] == "convnet, 2 levels, box refine + two-stage"


def test_what_runs_between_steps_is_spread_over_the_epoch(report):
    between = report["between_steps"]
    assert between["steps_per_epoch"] == 3
    evaluation = between["evaluation"]
    assert evaluation["pictures_timed"] == 2 and evaluation["pictures"] == 3
    assert evaluation["seconds"] == pytest.approx(
        evaluation["model_s"] + evaluation["pycocotools_s"]
    )
    assert evaluation["ms_per_step"] == pytest.approx(1e3 * evaluation["seconds"] / 3)
    assert between["checkpoint"]["seconds"] > 0
    # checkpoint_last.pth every epoch and, at worst, checkpoint_best.pth after every evaluation
    assert between["checkpoint"]["ms_per_step"] == pytest.approx(
        1e3 * between["checkpoint"]["seconds"] * 2 / 3
    )
    assert between["metrics_line"]["ms_per_step"] == pytest.approx(
        1e3 * between["metrics_line"]["seconds"] / 50  # the shapes recipe's train.log_every
    )


def test_cli_bench_train_prints_the_parts_and_writes_json(tmp_path):
    out = tmp_path / "train.json"
    result = runner.invoke(
        app,
        [
            "bench",
            "--train",
            *TINY,
            "--iters",
            "2",
            "--warmup",
            "1",
            "--eval-pictures",
            "0",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    for word in ("- matcher", "- loss_labels", "backward", "optimizer", "checkpoint"):
        assert word in result.output
    saved = json.loads(out.read_text())
    assert saved["command"].startswith("ddetr ")
    assert "evaluation" not in saved["between_steps"]
    assert [r["part"] for r in saved["parts"]][:3] == ["data", "step", "forward"]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--iters", "0"], 2, "--iters >= 1"),
        (["--image-size", "8", "8"], 2, "--image-size must be at least 32 32"),
        (["--iters", "9"], 1, "the training set has 3 batches, fewer than the 10 steps"),
    ],
)
def test_cli_bench_train_errors_are_one_line(args, status, message):
    result = runner.invoke(app, ["bench", "--train", *TINY, "--warmup", "1", *args])
    assert result.exit_code == status, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
