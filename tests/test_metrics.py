"""Precision, recall, F1 and the confusion matrix at a working score threshold
(`ddetr evaluate --threshold`), checked on a case counted by hand and against COCOeval's own
matching."""

from __future__ import annotations

import contextlib
import io
import json
import random

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from ddetr_cli.cli import app
from ddetr_cli.evaluation.thresholds import (
    IGNORED,
    SWEEP,
    Counts,
    match_detections,
    threshold_metrics,
)

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _dataset(boxes: list[tuple], images: int = 3, categories: list | None = None) -> dict:
    """boxes: (image_id, category_id, [x, y, w, h], iscrowd)."""
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100}
                   for i in range(1, images + 1)],
        "annotations": [{"id": k + 1, "image_id": img, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": crowd}
                        for k, (img, cat, box, crowd) in enumerate(boxes)],
        "categories": categories or CATEGORIES,
    }  # fmt: skip


# Picture 1: a cat, a dog and a crowd of cats; picture 2: a bird and a dog; picture 3: a cat.
GROUND_TRUTH = [
    (1, 1, [10, 10, 20, 20], 0),  # cat A
    (1, 2, [50, 50, 20, 20], 0),  # dog B
    (1, 1, [0, 60, 30, 30], 1),  # crowd of cats C
    (2, 3, [20, 20, 40, 40], 0),  # bird D
    (2, 2, [70, 0, 20, 20], 0),  # dog E
    (3, 1, [30, 30, 30, 30], 0),  # cat F
]
DETECTIONS = [
    (1, 1, [10, 10, 20, 20], 0.9),  # d1 cat on A: true positive
    (1, 1, [11, 11, 20, 20], 0.8),  # d2 cat on A again (IoU 0.82): duplicate, false positive
    (1, 1, [0, 60, 30, 30], 0.7),  # d3 cat on the crowd only: ignored
    (1, 1, [50, 50, 20, 20], 0.6),  # d4 cat on dog B: wrong class, false positive
    (2, 3, [20, 20, 40, 40], 0.95),  # d5 bird on D: true positive
    (2, 2, [0, 70, 10, 10], 0.55),  # d6 dog on nothing: false positive
    (2, 2, [70, 0, 20, 20], 0.3),  # d7 dog on E, below 0.5
    (3, 3, [30, 30, 30, 30], 0.4),  # d8 bird on cat F, below 0.5
]


def _results(rows=DETECTIONS) -> list[dict]:
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in rows]


@pytest.fixture
def coco_gt() -> COCO:
    return _coco(_dataset(GROUND_TRUTH))


def test_counts_at_a_threshold_are_the_hand_counted_ones(coco_gt):
    at = threshold_metrics(coco_gt, _results(), score_threshold=0.5, iou_threshold=0.5)
    # cat: d1 TP; d2 duplicate and d4 wrong class FP; d3 on the crowd neither; F missed.
    assert at.per_class[1] == Counts(tp=1, fp=2, fn=1)
    # dog: d6 FP; B (taken by no dog) and E (d7 is below the threshold) missed.
    assert at.per_class[2] == Counts(tp=0, fp=1, fn=2)
    assert at.per_class[3] == Counts(tp=1, fp=0, fn=0)  # bird: d5
    assert at.overall == Counts(tp=2, fp=3, fn=3)
    assert (at.overall.precision, at.overall.recall) == (pytest.approx(0.4), pytest.approx(0.4))
    cat = at.per_class[1]
    assert (cat.precision, cat.recall, cat.f1) == pytest.approx((1 / 3, 1 / 2, 0.4))
    assert at.per_class[2].f1 == 0.0  # no true positive: 0, not a division by zero


def test_confusion_matrix_is_the_hand_counted_one(coco_gt):
    at = threshold_metrics(coco_gt, _results(), score_threshold=0.5, iou_threshold=0.5)
    assert at.confusion.labels == ["cat", "dog", "bird", "background"]
    expected = [
        [1, 0, 0, 1],  # cat: d1; F missed
        [1, 0, 0, 1],  # dog: d4 called it a cat; E missed
        [0, 0, 1, 0],  # bird: d5
        [1, 1, 0, 0],  # background: d2 (the duplicate) and d6; d3 (crowd) counts nowhere
    ]
    assert at.confusion.matrix.tolist() == expected
    # The diagonal is the true positives, a row sums to the class's boxes (TP + FN), a
    # column to its counted detections (TP + FP).
    for k, category in enumerate((1, 2, 3)):
        counts = at.per_class[category]
        assert at.confusion.matrix[k, k] == counts.tp
        assert at.confusion.matrix[k].sum() == counts.tp + counts.fn
        assert at.confusion.matrix[:, k].sum() == counts.tp + counts.fp


def test_a_lower_threshold_and_a_stricter_iou_change_the_counts(coco_gt):
    low = threshold_metrics(coco_gt, _results(), score_threshold=0.3)
    assert low.per_class[2] == Counts(tp=1, fp=1, fn=1)  # d7 now finds E
    assert low.per_class[3] == Counts(tp=1, fp=1, fn=0)  # d8 is a bird on a cat
    assert low.confusion.matrix[0, 2] == 1  # ... which the confusion matrix shows
    strict = threshold_metrics(coco_gt, _results(), score_threshold=0.5, iou_threshold=0.9)
    # d2 overlaps A at 0.82 only; every other match is exact.
    assert strict.per_class[1] == Counts(tp=1, fp=2, fn=1)
    moved = [(1, 1, [14, 14, 20, 20], 0.9)]  # IoU 0.47 with A
    assert threshold_metrics(coco_gt, _results(moved), 0.5).per_class[1] == Counts(0, 1, 2)


def test_the_sweep_finds_the_best_f1(coco_gt):
    at = threshold_metrics(coco_gt, _results(), score_threshold=0.5)
    assert [s["score_threshold"] for s in at.sweep] == list(SWEEP)
    assert SWEEP[0] == 0.05 and SWEEP[-1] == 0.95 and len(SWEEP) == 19
    f1 = {s["score_threshold"]: s["f1"] for s in at.sweep}
    # F1 = 2TP / (2TP + FP + FN), counted by hand at a few thresholds.
    assert f1[0.3] == pytest.approx(6 / 12)  # TP 3 (d1 d5 d7), FP 4 (d2 d4 d6 d8), FN 2
    assert f1[0.4] == pytest.approx(4 / 11)  # d7 gone: TP 2, FP 4, FN 3
    assert f1[0.5] == pytest.approx(at.overall.f1)
    assert f1[0.6] == pytest.approx(4 / 9)  # a score equal to the threshold is kept (d4)
    assert f1[0.95] == pytest.approx(2 / 6)  # d5 alone
    assert at.best_f1 == {"score_threshold": 0.85, "f1": pytest.approx(4 / 7),
                          "precision": 1.0, "recall": pytest.approx(0.4)}  # fmt: skip


def test_json_has_the_documented_keys(coco_gt):
    report = json.loads(json.dumps(threshold_metrics(coco_gt, _results(), 0.5).to_json()))
    at = report["at_threshold"]
    assert set(at) == {"score_threshold", "iou_threshold", "precision", "recall", "f1",
                       "tp", "fp", "fn", "per_class"}  # fmt: skip
    assert (at["score_threshold"], at["iou_threshold"]) == (0.5, 0.5)
    assert (at["tp"], at["fp"], at["fn"]) == (2, 3, 3)
    assert list(at["per_class"]) == ["cat", "dog", "bird"]
    cat = at["per_class"]["cat"]
    assert (cat["tp"], cat["fp"], cat["fn"], cat["recall"]) == (1, 2, 1, 0.5)
    assert (cat["precision"], cat["f1"]) == pytest.approx((1 / 3, 0.4))
    assert report["confusion_matrix"]["labels"][-1] == "background"
    assert np.array(report["confusion_matrix"]["matrix"]).shape == (4, 4)
    assert set(report["best_f1"]) == {"score_threshold", "f1", "precision", "recall"}


def test_no_detections_and_detections_elsewhere_count_as_nothing(coco_gt):
    empty = threshold_metrics(coco_gt, [], 0.5)
    assert empty.overall == Counts(tp=0, fp=0, fn=5) and empty.overall.precision == 0.0
    assert empty.confusion.matrix[:, -1].tolist() == [2, 2, 1, 0]
    # Pictures outside image_ids are left out, their boxes and their detections.
    only_2 = threshold_metrics(coco_gt, _results(), 0.5, image_ids=[2])
    assert only_2.overall == Counts(tp=1, fp=1, fn=1)


def _cocoeval_outcomes(coco_gt: COCO, results: list[dict], iou_index: int) -> dict:
    """Per category, COCOeval's true and false positives at one of its IoU thresholds (area
    all, 100 detections per picture), ignored detections left out."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
    counts: dict[int, list[int]] = {c: [0, 0] for c in coco_gt.getCatIds()}
    for entry in evaluator.evalImgs:
        if entry is None or entry["aRng"] != [0, 1e10]:
            continue
        matched = entry["dtMatches"][iou_index] > 0
        ignored = entry["dtIgnore"][iou_index].astype(bool)
        counts[entry["category_id"]][0] += int((matched & ~ignored).sum())
        counts[entry["category_id"]][1] += int((~matched & ~ignored).sum())
    return counts


@pytest.mark.parametrize("iou_index, iou", [(0, 0.5), (5, 0.75)])
def test_matching_equals_cocoevals_on_random_detections(iou_index, iou):
    rng = random.Random(7)
    boxes, results = [], []
    for image in range(1, 41):
        for _ in range(rng.randint(0, 5)):
            x, y, w, h = (
                rng.uniform(0, 60),
                rng.uniform(0, 60),
                rng.uniform(8, 40),
                rng.uniform(8, 40),
            )
            boxes.append((image, rng.randint(1, 3), [x, y, w, h], int(rng.random() < 0.15)))
            for _ in range(rng.randint(0, 3)):  # detections near the box, some of other classes
                jitter = [v + rng.uniform(-4, 4) for v in (x, y, w, h)]
                results.append({"image_id": image, "category_id": rng.randint(1, 3),
                                "bbox": jitter, "score": round(rng.random(), 3)})  # fmt: skip
        for _ in range(rng.randint(0, 3)):  # and some anywhere
            box = [rng.uniform(0, 70), rng.uniform(0, 70), 20.0, 20.0]
            results.append({"image_id": image, "category_id": rng.randint(1, 3), "bbox": box,
                            "score": rng.random()})  # fmt: skip
    coco_gt = _coco(_dataset(boxes, images=40))
    expected = _cocoeval_outcomes(coco_gt, results, iou_index)
    matching = match_detections(coco_gt, results, iou_threshold=iou)
    ours = matching.counts(0.0)
    assert {c: [n.tp, n.fp] for c, n in ours.items()} == expected
    # The case is not a trivial one: matches, misses and detections on crowds.
    assert sum(n.tp for n in ours.values()) > 5 and sum(n.fn for n in ours.values()) > 5
    assert (matching.outcomes == IGNORED).sum() > 0


def _files(tmp_path, coco_gt):
    gt, predictions = tmp_path / "gt.json", tmp_path / "results.json"
    gt.write_text(json.dumps(coco_gt.dataset))
    predictions.write_text(json.dumps(_results()))
    return gt, predictions


def test_cli_threshold_prints_and_writes_the_metrics(tmp_path, coco_gt):
    gt, predictions = _files(tmp_path, coco_gt)
    out = tmp_path / "metrics.json"
    args = ["evaluate", "--predictions", str(predictions), "--annotations", str(gt),
            "--threshold", "0.5", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert "AP" in metrics and metrics["at_threshold"]["tp"] == 2
    assert metrics["confusion_matrix"]["matrix"][1] == [1, 0, 0, 1]
    assert metrics["best_f1"]["score_threshold"] == 0.85
    assert "precision" in result.output and "background" in result.output
    assert "best F1 0.571 at score >= 0.85" in result.output
    assert not (tmp_path / "evaluation").exists()  # no --plots: nothing written there


def test_cli_without_threshold_adds_nothing(tmp_path, coco_gt):
    gt, predictions = _files(tmp_path, coco_gt)
    out = tmp_path / "metrics.json"
    args = ["evaluate", "--predictions", str(predictions), "--annotations", str(gt),
            "--json", str(out)]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    metrics = json.loads(out.read_text())
    assert not {"at_threshold", "confusion_matrix", "best_f1"} & metrics.keys()


def test_cli_plots_writes_the_pictures(tmp_path, coco_gt):
    gt, predictions = _files(tmp_path, coco_gt)
    folder = tmp_path / "eval"
    args = ["evaluate", "--predictions", str(predictions), "--annotations", str(gt),
            "-t", "0.5", "--iou", "0.5", "--plots", "-o", str(folder)]  # fmt: skip
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    names = ["pr_curve_AP50.png", "pr_curve_AP.png", "confusion_matrix.png", "f1_curve.png"]
    for name in names:
        assert f"plot: {folder / name}" in result.output
        picture = np.asarray(Image.open(folder / name).convert("RGB")).astype(int)
        assert picture.shape[0] > 300 and picture.shape[1] > 300
        assert (picture.sum(-1) < 600).mean() > 0.01  # something is drawn on the white
    # The confusion matrix's darkest cell is bird/bird (a whole row): matplotlib's Blues top.
    confusion = np.asarray(Image.open(folder / "confusion_matrix.png").convert("RGB"))
    assert (np.abs(confusion.astype(int) - [8, 48, 107]).sum(-1) < 20).sum() > 1000


def test_cli_plots_without_threshold_draws_only_the_curves(tmp_path, coco_gt):
    gt, predictions = _files(tmp_path, coco_gt)
    folder = tmp_path / "eval"
    args = ["evaluate", "--predictions", str(predictions), "--annotations", str(gt),
            "--plots", "-o", str(folder)]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["pr_curve_AP.png", "pr_curve_AP50.png"]
