"""Evaluation when COCOeval's 100 detections per picture cut some off (#21)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ddetr_cli.data import shapes
from ddetr_cli.data.shapes_dataset import coco_from_dict
from ddetr_cli.evaluation.coco import coco_evaluation
from ddetr_cli.evaluation.max_detections import coco_stats_at, every_detection

pytest.importorskip("pycocotools")


def _many_detections(per_picture: int) -> tuple[object, list[dict]]:
    """Ground truth of 4 shapes pictures; detections: the true boxes at score 0.5, after
    ``per_picture`` minus their number better-scoring circles (class 0) that hit nothing."""
    truth = shapes.coco_dict(shapes.VAL_SEED, 4)
    rng = np.random.default_rng(0)
    results = []
    for image in truth["images"]:
        hits = [a for a in truth["annotations"] if a["image_id"] == image["id"]]
        misses = per_picture - len(hits)
        for i in range(misses):
            x, y = rng.uniform(0, 100, 2)
            results.append({"image_id": image["id"], "category_id": 0,
                            "bbox": [x, y, 5.0, 5.0], "score": 0.9 - i * 1e-4})  # fmt: skip
        for a in hits:
            results.append({"image_id": image["id"], "category_id": a["category_id"],
                            "bbox": a["bbox"], "score": 0.5})  # fmt: skip
    return coco_from_dict(truth), results


def test_stats_at_100_are_pycocotools_own():
    coco, results = _many_detections(150)
    standard, _ = coco_evaluation(coco, results)
    assert coco_stats_at(coco, results, None, 100) == pytest.approx(standard, abs=1e-12)


def test_every_detection_counts_what_100_cut_off():
    coco, results = _many_detections(150)
    standard, _ = coco_evaluation(coco, results)
    every = every_detection(coco, results)
    circles = Counter(r["image_id"] for r in results if r["category_id"] == 0)
    assert (every.max_dets, every.pictures_over_limit) == (max(circles.values()), 4)
    assert min(circles.values()) > 140
    # COCOeval's limit is per picture and class: the true circles come after 140-odd better
    # circles and the best 100 miss them; rectangles and triangles are all found.
    classes = {a["category_id"] for a in coco.dataset["annotations"]}
    assert classes == {0, 1, 2}
    assert standard["AR100"] == pytest.approx(2 / 3) and every.stats["AR100"] == 1.0
    assert every.stats["AP"] > standard["AP"]
    assert every_detection(coco, [r for r in results if r["score"] <= 0.5]) is None
