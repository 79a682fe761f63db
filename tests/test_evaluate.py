"""`ddetr evaluate`: the numbers are exactly pycocotools'; bad input is one clear line."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from ports import free_port
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from ddetr_cli.cli import app
from ddetr_cli.data import shapes
from ddetr_cli.evaluation.coco import STAT_NAMES, Detections
from ddetr_cli.evaluation.evaluate import evaluate_checkpoint, score_predictions
from ddetr_cli.model import build_model
from ddetr_cli.recipe import load_recipe
from ddetr_cli.weights import save_checkpoint


def _ground_truth() -> dict:
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 80} for i in (1, 2, 3)]
    boxes = [(1, 1, [10, 10, 30, 20]), (1, 2, [50, 40, 20, 30]), (2, 1, [5, 5, 60, 60]),
             (3, 2, [20, 10, 40, 40]), (3, 1, [70, 50, 25, 25])]  # fmt: skip
    annotations = [
        {"id": k + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
         "iscrowd": 0}
        for k, (img, cat, box) in enumerate(boxes)
    ]  # fmt: skip
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def _results() -> list[dict]:
    return [
        {"image_id": 1, "category_id": 1, "bbox": [11, 10, 30, 21], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [48, 40, 22, 28], "score": 0.6},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.8},
        {"image_id": 3, "category_id": 2, "bbox": [20, 10, 40, 40], "score": 0.3},
        {"image_id": 3, "category_id": 1, "bbox": [10, 10, 10, 10], "score": 0.7},
    ]


@pytest.fixture
def files(tmp_path):
    gt, results = tmp_path / "gt.json", tmp_path / "results.json"
    gt.write_text(json.dumps(_ground_truth()))
    results.write_text(json.dumps(_results()))
    return gt, results


def _pycocotools(gt_path, results_path) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(str(results_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def test_scoring_a_results_file_equals_pycocotools(files):
    gt, results = files
    expected = _pycocotools(gt, results)
    report = score_predictions(results, gt)
    assert list(report.stats) == list(STAT_NAMES)
    assert list(report.stats.values()) == [float(v) for v in expected.stats]  # -1: no such boxes
    for k, category in enumerate(expected.params.catIds):
        precision = expected.eval["precision"][:, :, k, 0, -1]
        assert report.per_class[category] == pytest.approx(precision[precision > -1].mean())
    assert report.stats["AP"] > 0.1 and report.class_names == {1: "cat", 2: "dog"}


def test_cli_writes_metrics_json(files, tmp_path):
    gt, results = files
    out = tmp_path / "metrics.json"
    args = ["evaluate", "--predictions", str(results), "--annotations", str(gt), "--json", str(out)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert [metrics[name] for name in STAT_NAMES] == [
        float(v) for v in _pycocotools(gt, results).stats
    ]
    assert [c["name"] for c in metrics["per_class"]] == ["cat", "dog"]
    assert "AR100" in result.output and "dog" in result.output


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_gt", "annotations file not found"),
        ("bad_json", "not a JSON results file"),
        ("unknown_image", "names image_id 99, which the annotations do not have"),
        ("not_a_list", "a COCO results file is a list of detections"),
        ("no_annotations", "--predictions needs --annotations"),
    ],
)
def test_bad_input_is_one_clear_line(files, tmp_path, case, message):
    gt, results = files
    if case == "missing_gt":
        gt = tmp_path / "missing.json"
    elif case == "bad_json":
        results.write_text("[{")
    elif case == "unknown_image":
        results.write_text(json.dumps([{**_results()[0], "image_id": 99}]))
    elif case == "not_a_list":
        results.write_text(json.dumps({"image_id": 1}))
    args = ["evaluate", "--predictions", str(results)]
    if case != "no_annotations":
        args += ["--annotations", str(gt)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == (2 if case == "no_annotations" else 1)  # a usage error exits 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_model_evaluation_equals_pycocotools_on_its_own_detections(tmp_path):
    recipe = load_recipe(
        "recipes/shapes.yaml",
        ["model.enc_layers=1", "model.dec_layers=1", "model.hidden_dim=32",
         "model.dim_feedforward=64", "data.shapes.val_images=6"],
    )  # fmt: skip
    weights = save_checkpoint(tmp_path / "ckpt.pth", build_model(recipe), recipe)
    report = evaluate_checkpoint(weights, out_dir=tmp_path / "eval", batch_size=4)
    # Top-k over queries x classes: 30 queries x 3 classes = 90 per picture.
    assert report.num_images == 6 and report.num_detections == 6 * 90
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(shapes.coco_dict(shapes.VAL_SEED, 6)))
    expected = _pycocotools(gt, report.detections_path)
    np.testing.assert_allclose(
        list(report.stats.values()),
        [float(v) for v in expected.stats],  # -1: no such boxes
    )
    detections = json.loads(report.detections_path.read_text())
    assert {d["image_id"] for d in detections} == set(range(1, 7))


def test_model_evaluation_scores_perfect_detections_as_perfect(tmp_path, monkeypatch):
    """The wiring (detections file, image ids, COCOeval) with non-trivial numbers: detections
    equal to the ground truth score AP 1, and pycocotools agrees on the written file."""
    import ddetr_cli.evaluation.evaluate as evaluate

    truth = shapes.coco_dict(shapes.VAL_SEED, 5)

    def oracle(*args, **kwargs):
        exact = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                  "score": 0.9} for a in truth["annotations"]]  # fmt: skip
        return Detections(exact)

    monkeypatch.setattr(evaluate, "predict_coco_results", oracle)
    recipe = load_recipe("recipes/shapes.yaml", ["data.shapes.val_images=5"])
    weights = save_checkpoint(tmp_path / "ckpt.pth", build_model(recipe), recipe)
    report = evaluate_checkpoint(weights, out_dir=tmp_path / "eval")
    assert report.stats["AP"] == pytest.approx(1.0) and report.stats["AR100"] == pytest.approx(1.0)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(truth))
    expected = _pycocotools(gt, report.detections_path)
    np.testing.assert_allclose(
        list(report.stats.values()),
        [float(v) for v in expected.stats],  # -1: no such boxes
    )


def test_model_evaluation_needs_data(tmp_path):
    recipe = load_recipe(None, ["model.backbone=resnet18", "model.hidden_dim=32",
                                "model.dim_feedforward=64", "model.enc_layers=1",
                                "model.dec_layers=1"])  # fmt: skip
    weights = save_checkpoint(tmp_path / "ckpt.pth", build_model(recipe), recipe)
    result = CliRunner().invoke(app, ["evaluate", "-w", str(weights)])
    assert result.exit_code == 1
    assert "no evaluation data" in result.output and len(result.output.strip().splitlines()) == 1


def test_torchrun_evaluation_equals_one_process(tmp_path):
    """Two gloo processes over 5 pictures (the sampler repeats one to even the shares): process 0
    gathers exactly the detections and numbers of a one-process run."""
    import os
    import subprocess
    import sys

    recipe = load_recipe(
        "recipes/shapes.yaml",
        ["model.enc_layers=1", "model.dec_layers=1", "model.hidden_dim=32",
         "model.dim_feedforward=64", "data.shapes.val_images=5"],
    )  # fmt: skip
    weights = save_checkpoint(tmp_path / "ckpt.pth", build_model(recipe), recipe)
    single = evaluate_checkpoint(weights, out_dir=tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port()), "-m", "ddetr_cli", "evaluate", "-w", str(weights),
           "-o", str(tmp_path / "two"), "--json", str(tmp_path / "two.json")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    def key(d):
        return (d["image_id"], d["category_id"], d["score"])

    one = sorted(json.loads((tmp_path / "one" / "detections.json").read_text()), key=key)
    two = sorted(json.loads((tmp_path / "two" / "detections.json").read_text()), key=key)
    assert len(one) == len(two) == 5 * 90
    for a, b in zip(one, two, strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(
            a["bbox"] + [a["score"]], b["bbox"] + [b["score"]], rtol=1e-4, atol=1e-3
        )
    metrics = json.loads((tmp_path / "two.json").read_text())
    assert metrics["num_images"] == 5
    for name in STAT_NAMES:
        assert metrics[name] == pytest.approx(single.stats[name], abs=1e-6)


def test_model_evaluation_reports_metrics_at_a_threshold(tmp_path, monkeypatch):
    """Threshold metrics of a model run use the evaluated pictures and their detections: an
    oracle scores precision = recall = 1, a diagonal confusion matrix, and its JSON has them."""
    import ddetr_cli.evaluation.evaluate as evaluate

    truth = shapes.coco_dict(shapes.VAL_SEED, 4)

    def oracle(*args, **kwargs):
        exact = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                  "score": 0.9} for a in truth["annotations"]]  # fmt: skip
        weak = [{**d, "score": 0.2} for d in exact]  # duplicates under the threshold
        return Detections(exact + weak)

    monkeypatch.setattr(evaluate, "predict_coco_results", oracle)
    recipe = load_recipe("recipes/shapes.yaml", ["data.shapes.val_images=4"])
    weights = save_checkpoint(tmp_path / "ckpt.pth", build_model(recipe), recipe)
    report = evaluate_checkpoint(weights, out_dir=tmp_path / "eval")
    at = report.add_threshold_metrics(0.5)
    boxes = len([a for a in truth["annotations"] if not a.get("iscrowd")])
    assert (at.overall.tp, at.overall.fp, at.overall.fn) == (boxes, 0, 0)
    matrix = at.confusion.matrix
    assert (matrix == np.diag(np.diag(matrix))).all() and matrix.trace() == boxes
    metrics = report.to_json()
    assert metrics["at_threshold"]["precision"] == metrics["at_threshold"]["recall"] == 1.0
    assert metrics["best_f1"]["score_threshold"] == 0.25  # the duplicates are gone from there
    assert report.precision is not None and report.precision.shape[2] == len(report.per_class)


# --- an unreadable picture: no detections, its boxes still count, never a neighbour's --------

_SIZE = (48, 64)  # height, width of every picture
_BROKEN = 2  # image id of the picture that cannot be read


def _colour_coded_truth() -> dict:
    """Four pictures, two boxes each (category 1 and 2); picture k is filled with red 40 * k."""
    images = [{"id": k, "file_name": f"{k}.png", "height": _SIZE[0], "width": _SIZE[1]}
              for k in (1, 2, 3, 4)]  # fmt: skip
    annotations = []
    for k in (1, 2, 3, 4):
        for category, box in ((1, [4 + k, 6, 20, 16]), (2, [30, 20, 14, 18])):
            annotations.append({"id": len(annotations) + 1, "image_id": k, "category_id": category,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}  # fmt: skip


def _intended_detections(image_id: int) -> list[dict]:
    """What the stub model finds on picture ``image_id``: box 1 exactly (score 0.9), box 2
    shifted by (3, 2) pixels (IoU 0.54, score 0.6)."""
    x = 4 + image_id
    return [
        {"image_id": image_id, "category_id": 1, "bbox": [x, 6, 20, 16], "score": 0.9},
        {"image_id": image_id, "category_id": 2, "bbox": [33, 22, 14, 18], "score": 0.6},
    ]


class _ColourCoded(torch.nn.Module):
    """Tells the pictures apart by their colour and outputs ``_intended_detections`` of each in
    the model's output format (2 queries, 3 classes)."""

    def forward(self, images):
        logits = torch.full((len(images), 2, 3), -30.0)
        boxes = torch.full((len(images), 2, 4), 0.5)
        height, width = _SIZE
        for b, image in enumerate(images):
            red = float(image[0].mean()) * 0.229 + 0.485  # undo the ImageNet normalisation
            for q, det in enumerate(_intended_detections(round(red * 255 / 40))):
                x, y, w, h = det["bbox"]
                logits[b, q, det["category_id"]] = math.log(det["score"] / (1 - det["score"]))
                boxes[b, q] = torch.tensor([(x + w / 2) / width, (y + h / 2) / height,
                                            w / width, h / height])  # fmt: skip
        return {"pred_logits": logits, "pred_boxes": boxes}

    def optimize_for_inference(self):
        return self


@pytest.fixture(params=["undecodable", "missing"])
def broken_val_folder(request, tmp_path):
    """(pictures folder, annotations file) with picture ``_BROKEN`` unreadable."""
    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    for k in (1, 2, 3, 4):
        Image.new("RGB", _SIZE[::-1], (40 * k, 0, 0)).save(folder / f"{k}.png")
    if request.param == "undecodable":
        (folder / f"{_BROKEN}.png").write_bytes(b"not a picture")
    else:
        (folder / f"{_BROKEN}.png").unlink()
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps(_colour_coded_truth()))
    return folder, annotations


def _expected_with_broken_picture_empty(tmp_path) -> COCOeval:
    """pycocotools on the ground truth and the intended detections of every picture but the
    broken one: what the evaluation must give."""
    results = tmp_path / "expected_results.json"
    readable = [d for k in (1, 2, 3, 4) if k != _BROKEN for d in _intended_detections(k)]
    results.write_text(json.dumps(readable))
    gt = tmp_path / "expected_gt.json"
    gt.write_text(json.dumps(_colour_coded_truth()))
    return _pycocotools(gt, results)


def _stub_model(monkeypatch):
    import ddetr_cli.evaluation.evaluate as evaluate

    def resolve(weights, recipe_path, overrides, device):
        recipe = load_recipe(None, [*overrides, "model.num_classes=3", "model.num_detections=2",
                                    "data.eval_min_size=48"])  # fmt: skip
        return _ColourCoded(), recipe

    monkeypatch.setattr(evaluate, "resolve_model", resolve)


def test_unreadable_picture_scores_as_one_without_detections(
    broken_val_folder, tmp_path, monkeypatch
):
    folder, annotations = broken_val_folder
    _stub_model(monkeypatch)
    report = evaluate_checkpoint("stub", images=folder, annotations=annotations, batch_size=2,
                                 out_dir=tmp_path / "eval")  # fmt: skip
    expected = _expected_with_broken_picture_empty(tmp_path)
    assert list(report.stats.values()) == pytest.approx([float(v) for v in expected.stats])
    assert 0.3 < report.stats["AP"] < 0.9  # neither trivial nor empty
    assert report.num_images == 4 and report.num_detections == 6
    assert list(report.unreadable) == [_BROKEN]
    assert f"{_BROKEN}.png" in report.unreadable[_BROKEN]
    detections = json.loads(report.detections_path.read_text())
    assert sorted({d["image_id"] for d in detections}) == [1, 3, 4]


def test_evaluate_names_the_unreadable_picture_and_exits_1(
    broken_val_folder, tmp_path, monkeypatch
):
    folder, annotations = broken_val_folder
    _stub_model(monkeypatch)
    metrics = tmp_path / "metrics.json"
    args = ["evaluate", "-w", "stub", "--images", str(folder), "--annotations", str(annotations),
            "-o", str(tmp_path / "eval"), "--json", str(metrics)]  # fmt: skip
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "COCO box AP (4 pictures, 6 detections)" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 2, errors
    assert errors[0].startswith("unreadable: ") and f"{_BROKEN}.png" in errors[0]
    assert errors[1] == ("error: 1 of 4 pictures could not be read; the numbers above count "
                         "them as pictures with no detections")  # fmt: skip
    written = json.loads(metrics.read_text())
    expected = _expected_with_broken_picture_empty(tmp_path)
    assert written["AP"] == pytest.approx(float(expected.stats[0]))
    assert [u["image_id"] for u in written["unreadable"]] == [_BROKEN]


def test_training_val_ap_counts_an_unreadable_picture_as_empty(broken_val_folder, tmp_path, caplog):
    """The per-epoch val AP (evaluate_coco on the val loader): the same numbers, and one warning
    naming the picture."""
    import logging

    from torch.utils.data import DataLoader

    from ddetr_cli.data import CocoDataset, collate
    from ddetr_cli.evaluation.coco import EvaluationRun, evaluate_coco

    folder, annotations = broken_val_folder
    dataset = CocoDataset(folder, annotations, train=False, min_size=48)
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate)
    with caplog.at_level(logging.WARNING):
        stats = evaluate_coco(_ColourCoded(), loader, EvaluationRun(num_detections=2))
    expected = _expected_with_broken_picture_empty(tmp_path)
    assert list(stats.values()) == pytest.approx([float(v) for v in expected.stats])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{_BROKEN}.png" in warnings[0]
    assert warnings[0].startswith("val: 1 of 4 pictures could not be read")
