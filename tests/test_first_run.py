"""What a first-time user hits (#14) and the command-line conventions (#10): each test here
failed before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ddetr_cli.bench.model import default_size
from ddetr_cli.cli import app
from ddetr_cli.data import shapes
from ddetr_cli.errors import DdetrError
from ddetr_cli.evaluation.evaluate import score_predictions
from ddetr_cli.recipe import load_recipe
from ddetr_cli.weights import read_checkpoint, read_weights, resolve_weights_path

DATA = Path(__file__).parent / "data"
OLD = DATA / "checkpoint_v0.1.0.pth"
runner = CliRunner()


@pytest.fixture
def gt_and_pictures(tmp_path):
    """Three shapes pictures with annotations whose image ids are not their positions."""
    truth = shapes.coco_dict(shapes.VAL_SEED, 3)
    for image in truth["images"]:
        image["id"] += 100
    for ann in truth["annotations"]:
        ann["image_id"] += 100
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(truth))
    return gt, truth


def _detections(truth, key):
    """Perfect detections, named by file (as predict writes them) or by image id."""
    names = {im["id"]: im["file_name"] for im in truth["images"]}
    out = []
    for position, ann in enumerate(truth["annotations"]):
        d = {"category_id": ann["category_id"], "bbox": ann["bbox"], "score": 0.9}
        if key == "file_name":
            d |= {"image_id": position + 1, "file_name": f"some/folder/{names[ann['image_id']]}"}
        else:
            d["image_id"] = ann["image_id"]
        out.append(d)
    return out


def test_predict_output_scores_by_file_name(tmp_path, gt_and_pictures):
    gt, truth = gt_and_pictures
    results = tmp_path / "predictions.json"
    results.write_text(json.dumps(_detections(truth, "file_name")))
    report = score_predictions(results, gt)
    assert report.stats["AP"] == pytest.approx(1.0)
    assert "by file name" in report.notes[0]
    results.write_text(json.dumps(_detections(truth, "image_id")))
    report = score_predictions(results, gt)
    assert report.stats["AP"] == pytest.approx(1.0) and "by image_id" in report.notes[0]


def test_detections_of_no_annotated_picture_are_refused(tmp_path, gt_and_pictures):
    gt, truth = gt_and_pictures
    wrong = [d | {"file_name": "elsewhere.png"} for d in _detections(truth, "file_name")]
    results = tmp_path / "predictions.json"
    results.write_text(json.dumps(wrong))
    with pytest.raises(DdetrError, match="none of the detections' file names"):
        score_predictions(results, gt)


def test_empty_size_ranges_stay_minus_one_and_print_as_n_a(tmp_path, gt_and_pictures):
    gt, truth = gt_and_pictures  # 128x128 pictures: no large objects
    results = tmp_path / "r.json"
    results.write_text(json.dumps(_detections(truth, "image_id")))
    metrics = tmp_path / "m.json"
    args = ["evaluate", "--predictions", str(results), "--annotations", str(gt)]
    result = runner.invoke(app, [*args, "--json", str(metrics)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert json.loads(metrics.read_text())["APl"] == -1.0
    line = next(x for x in result.stdout.splitlines() if " APl " in x)
    assert "n/a" in line and "-1" not in line


def test_bench_measures_at_the_models_own_size():
    assert default_size(load_recipe(None)) == (800, 1199)  # COCO's first picture, official sizes
    assert default_size(load_recipe("shapes")) == (128, 128)


def test_weights_may_name_a_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_last.pth").write_bytes(OLD.read_bytes())
    assert resolve_weights_path(run) == run / "checkpoint_last.pth"
    (run / "checkpoint_best.pth").write_bytes(OLD.read_bytes())
    assert resolve_weights_path(run) == run / "checkpoint_best.pth"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DdetrError, match="neither a run folder"):
        read_weights(empty)


def test_predict_takes_overrides_and_a_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_best.pth").write_bytes(OLD.read_bytes())
    picture = tmp_path / "in" / "p.png"
    picture.parent.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 48), "white").save(picture)
    out = tmp_path / "out"
    args = ["predict", str(picture.parent), "-w", str(run), "model.num_detections=2", "-t", "0"]
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(json.loads((out / "predictions.json").read_text())) == 2


def test_predict_into_its_input_folder_skips_its_own_drawings(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 48), "white").save(folder / "a.png")
    args = ["predict", str(folder), "-w", str(OLD), "-t", "0", "-o", str(folder)]
    for _ in range(2):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    detections = json.loads((folder / "predictions.json").read_text())
    names = {d["file_name"] for d in detections}
    assert names == {str(folder / "a.png")}
    assert sorted(p.name for p in folder.glob("*.png")) == ["a.png", "a_pred.png"]


class ForeignObject:
    """Not a tensor: a checkpoint holding it can only be read by full unpickling."""


def test_a_pickle_is_described_without_suggesting_to_unpickle_it(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": ForeignObject()}, path)
    with pytest.raises(DdetrError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "weights_only" not in message and "ForeignObject" in message and "\n" not in message


@pytest.mark.parametrize(
    "command",
    [["train", "--help"], ["bench", "--help"], ["visualize", "attention", "--help"]],
)
def test_help_shows_flags_as_flags(command):
    result = runner.invoke(app, command, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout


def test_help_shows_pairs_as_two_values():
    result = runner.invoke(app, ["bench", "--help"], env={"COLUMNS": "200"})
    assert "H W" in result.stdout and "<int,int>" not in result.stdout
    assert "ddetr bench op" in result.stdout  # the sub-command is listed in the default help
    result = runner.invoke(app, ["visualize", "attention", "--help"], env={"COLUMNS": "200"})
    assert "X Y" in result.stdout


def test_a_closed_pipe_is_quiet():
    """`ddetr train --help | head -1` must not print '[Errno 32] Broken pipe'."""
    for command in (["train", "--help"], ["recipe", "show", "refine"]):
        process = subprocess.Popen(
            [sys.executable, "-m", "ddetr_cli", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        process.stdout.close()
        assert process.stderr.read().decode() == ""
        process.wait()


def test_usage_mistakes_exit_2_everywhere(tmp_path):
    cases = [
        ["evaluate", "--predictions", "x.json"],  # needs --annotations
        ["ops", "build", "--device", "tpu"],
        ["bench", "--image-size", "8", "8"],
        ["predict", str(tmp_path), "-w", str(OLD), "-b", "0"],
        ["visualize", "dataset", "shapes", "--count", "0"],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.strip().startswith("error: "), (args, result.output)


def test_the_kernel_is_found_available_under_inference_mode(monkeypatch):
    """predict runs under inference_mode: the kernel's first availability probe (which runs a
    backward) must not fail there and leave the slow reference backend for the whole process."""
    from ddetr_cli.ops import backends, kernel

    monkeypatch.setattr(kernel, "_status", {})
    backends.clear_cache()
    with torch.inference_mode():
        ok, reason = backends.kernel_availability(torch.device("cpu"))
    assert ok, reason


def test_predicted_pictures_are_labelled_with_class_names(tmp_path, monkeypatch):
    from PIL import Image

    import ddetr_cli.inference.detections as detections_module
    import ddetr_cli.inference.predict as predict_module

    seen = []
    real = detections_module.draw_detections

    def spy(image, boxes, labels, scores=None, class_names=None):
        seen.append(class_names)
        return real(image, boxes, labels, scores, class_names)

    # predict draws pictures (and video frames) through inference.detections.draw_kept
    monkeypatch.setattr(detections_module, "draw_detections", spy)
    picture = tmp_path / "p.png"
    Image.new("RGB", (64, 48), "white").save(picture)
    predict_module.run_predict([picture], OLD, out_dir=tmp_path / "o", progress=False)
    assert seen == [["circle", "rectangle", "triangle"]]


def test_resume_drops_the_metrics_a_killed_run_wrote_after_its_checkpoint(tmp_path):
    """A run killed (not Ctrl-C) after its last checkpoint left lines past it; the resumed run
    would repeat those steps and the curves would jump back."""
    from ddetr_cli.train.report import Reporter

    lines = [{"type": "step", "step": s} for s in (50, 100, 150)] + [
        {"type": "epoch", "epoch": 0, "step": 150, "AP": 0.1},
        {"type": "step", "step": 200},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    reporter = Reporter(tmp_path, enabled=True, progress=False, tensorboard=False)
    reporter.forget_after(150)
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == lines[:4]


def test_convert_takes_a_recipe(tmp_path):
    """A file whose architecture cannot be inferred (official DC5 without args) needs the
    recipe the mismatch message asks for: convert has --recipe like the other commands."""
    from ddetr_cli.recipe import dump_recipe
    from ddetr_cli.weights.convert import convert

    recipe = read_checkpoint(OLD)["recipe"]
    recipe["model"]["num_detections"] = 7
    dump_recipe(recipe, tmp_path / "r.yaml")
    convert(OLD, tmp_path / "out.pth", "ddetr", tmp_path / "r.yaml", ["model.dropout=0.2"])
    written = read_checkpoint(tmp_path / "out.pth")["recipe"]["model"]
    assert (written["num_detections"], written["dropout"]) == (7, 0.2)
    with pytest.raises(DdetrError, match="pass the matching --recipe"):
        convert(OLD, tmp_path / "bad.pth", "ddetr", None, ["model.hidden_dim=64"])


def test_training_starts_from_any_weights_format(tmp_path):
    """train --weights reads what every --weights reads (here .safetensors; transformers
    folders go the same way), re-initialising class heads of another class count."""
    from ddetr_cli.model import build_model
    from ddetr_cli.recipe import validate_recipe
    from ddetr_cli.train.checkpointing import load_initial_weights
    from ddetr_cli.weights.convert import convert

    convert(OLD, tmp_path / "w.safetensors")
    recipe = read_checkpoint(OLD)["recipe"]
    recipe["model"] |= {"num_classes": 5, "class_names": None}
    model = build_model(validate_recipe(recipe))
    line = load_initial_weights(model, tmp_path / "w.safetensors")
    assert "re-initialised the class heads (3 -> 5 classes)" in line
