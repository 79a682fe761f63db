"""When COCOeval's 100 detections cut some off: the same numbers counting every detection.

COCOeval scores the best 100 detections of each class in each picture (its ``maxDets`` 1, 10,
100 are per picture and class); a large picture, sliced (``--slice``), may hold more objects
than that and is given up to ``--max-detections`` (500) of them. The standard 12 numbers stay
as pycocotools gives them; when a picture has more than 100 detections of a class,
``every_detection`` adds the 12 numbers again with ``maxDets`` 1, 10 and the most detections
of one class in one picture.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pycocotools.coco import COCO

COCO_MAX_DETS = 100  # COCOeval's default detections per picture and class


@dataclass
class EveryDetection:
    """The 12 COCOeval numbers with ``max_dets`` per picture and class (AR100 is then AR at
    max_dets), and how many pictures have more than COCOeval's 100 detections of a class."""

    max_dets: int
    pictures_over_limit: int
    stats: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "max_dets": self.max_dets,
            "pictures_over_100": self.pictures_over_limit,
            **self.stats,
        }


def _summary(
    evaluator: Any, ap: bool, max_dets: int, iou: float | None = None, area: str = "all"
) -> float:
    """One of COCOeval.summarize()'s numbers, for any maxDets (summarize() itself looks up
    the AP at maxDets 100 and gives -1 without it)."""
    p = evaluator.params
    a, m = p.areaRngLbl.index(area), p.maxDets.index(max_dets)
    values = evaluator.eval["precision" if ap else "recall"]  # T, (R,) K, A, M
    if iou is not None:
        values = values[np.isclose(p.iouThrs, iou)]
    values = values[..., a, m]
    values = values[values > -1]
    return float(values.mean()) if values.size else -1.0


def coco_stats_at(
    coco_gt: COCO, results: list[dict[str, Any]], image_ids: list[int] | None, max_dets: int
) -> dict[str, float]:
    """The 12 COCOeval box numbers with maxDets (1, 10, ``max_dets``), in summarize()'s order
    (``evaluation.coco.STAT_NAMES``, AR100 meaning AR at ``max_dets``)."""
    from pycocotools.cocoeval import COCOeval

    from ddetr_cli.evaluation.coco import STAT_NAMES

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.params.maxDets = [1, 10, max_dets]
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
    values = [_summary(evaluator, True, max_dets)]
    values += [_summary(evaluator, True, max_dets, iou=iou) for iou in (0.5, 0.75)]
    values += [_summary(evaluator, True, max_dets, area=a) for a in ("small", "medium", "large")]
    values += [_summary(evaluator, False, m) for m in (1, 10, max_dets)]
    values += [_summary(evaluator, False, max_dets, area=a) for a in ("small", "medium", "large")]
    return dict(zip(STAT_NAMES, values, strict=True))


def every_detection(
    coco_gt: COCO, results: list[dict[str, Any]], image_ids: list[int] | None = None
) -> EveryDetection | None:
    """The numbers counting every detection, or None when no picture has more than 100
    detections of a class."""
    counts = Counter((r["image_id"], r["category_id"]) for r in results)
    over = len({image for (image, _), n in counts.items() if n > COCO_MAX_DETS})
    if not over:
        return None
    most = max(counts.values())
    return EveryDetection(most, over, coco_stats_at(coco_gt, results, image_ids, most))
