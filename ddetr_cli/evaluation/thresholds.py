"""Detection metrics at one working score threshold: precision, recall, F1 and a confusion
matrix, from COCO ground truth and a COCO results list.

Matching follows COCOeval's rules at one IoU threshold: detections are taken by descending score
and each one takes the unmatched ground-truth box of its class with the highest IoU at or above
the threshold; every box is matched at most once. Crowd boxes (``iscrowd``; the VOC reader marks
"difficult" boxes so) and boxes with ``ignore`` set are never counted: a detection that only
overlaps one of them (IoU as COCOeval computes it for crowds: intersection over the detection's
area) is neither a true nor a false positive, and a missed one is no false negative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pycocotools.coco import COCO

# Outcome of a detection after matching.
TRUE_POSITIVE, FALSE_POSITIVE, IGNORED = 1, 0, -1
# Score thresholds of the best-F1 sweep: 0.05, 0.10, ..., 0.95.
SWEEP = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives, and what follows from them."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 0 without detections."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 0 without ground truth."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def to_json(self) -> dict[str, float | int]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


@dataclass
class Matching:
    """Every detection's outcome after greedy matching, in descending score order.

    ``gt_category`` is the category of the ground-truth box a detection took (-1 for none);
    ``missed`` holds the categories of the countable boxes no detection took.
    """

    scores: np.ndarray
    categories: np.ndarray
    outcomes: np.ndarray
    gt_category: np.ndarray
    missed: np.ndarray
    num_gt: dict[int, int]

    def counts(self, score_threshold: float) -> dict[int, Counts]:
        """Per-category counts of the detections scoring at least ``score_threshold``.

        Greedy matching by descending score means a detection's outcome never depends on the
        ones scoring lower, so one matching of every detection serves each threshold.
        """
        kept = self.scores >= score_threshold
        result = {}
        for category, total in self.num_gt.items():
            mine = kept & (self.categories == category)
            tp = int((mine & (self.outcomes == TRUE_POSITIVE)).sum())
            fp = int((mine & (self.outcomes == FALSE_POSITIVE)).sum())
            result[category] = Counts(tp, fp, total - tp)
        return result


@dataclass
class ConfusionMatrix:
    """Rows: ground-truth classes then background (detections on nothing); columns: predicted
    classes then background (boxes nobody found)."""

    labels: list[str]
    matrix: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "matrix": self.matrix.astype(int).tolist()}


@dataclass
class ThresholdMetrics:
    score_threshold: float
    iou_threshold: float
    overall: Counts
    per_class: dict[int, Counts]
    class_names: dict[int, str]
    confusion: ConfusionMatrix
    sweep: list[dict[str, float]] = field(default_factory=list)

    @property
    def best_f1(self) -> dict[str, float] | None:
        """The sweep's entry with the highest F1 (the lowest threshold among equals)."""
        return max(self.sweep, key=lambda s: s["f1"]) if self.sweep else None

    def to_json(self) -> dict[str, Any]:
        names = _unique_names(self.per_class, self.class_names)
        at_threshold = {
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            **self.overall.to_json(),
            "per_class": {names[c]: counts.to_json() for c, counts in self.per_class.items()},
        }
        return {
            "at_threshold": at_threshold,
            "confusion_matrix": self.confusion.to_json(),
            "best_f1": self.best_f1,
        }


def _unique_names(categories: dict[int, Any], names: dict[int, str]) -> dict[int, str]:
    """Category names usable as JSON keys: the id is added to a name two categories share."""
    plain = {c: names.get(c, str(c)) for c in categories}
    shared = list(plain.values())
    return {c: n if shared.count(n) == 1 else f"{n} ({c})" for c, n in plain.items()}


def _match_image(
    boxes: np.ndarray,
    categories: np.ndarray,
    gt_boxes: np.ndarray,
    gt_categories: np.ndarray,
    gt_crowd: np.ndarray,
    gt_ignore: np.ndarray,
    iou_threshold: float,
    across_classes: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One picture's detections (already in descending score order) against its boxes: each
    detection's outcome, the index of the box it took (-1: none) and which boxes were taken.

    With ``across_classes``, the false positives then take, again by score, the boxes left over
    of any class (for the confusion matrix); their outcome stays a false positive.
    """
    n, m = len(boxes), len(gt_boxes)
    outcomes = np.full(n, FALSE_POSITIVE, dtype=np.int64)
    taken_by = np.full(n, -1, dtype=np.int64)
    taken = np.zeros(m, dtype=bool)
    if n == 0 or m == 0:
        return outcomes, taken_by, taken
    from pycocotools import mask as mask_utils

    # COCOeval's IoU: for a crowd box, the intersection over the detection's area.
    iou = np.asarray(mask_utils.iou(boxes, gt_boxes, gt_crowd.astype(np.uint8).tolist()))
    overlaps = iou >= min(iou_threshold, 1 - 1e-10)
    same = categories[:, None] == gt_categories[None, :]
    for d in range(n):
        free = overlaps[d] & same[d] & ~gt_ignore & ~taken
        if free.any():
            j = int(np.argmax(np.where(free, iou[d], -1.0)))
            taken[j], taken_by[d], outcomes[d] = True, j, TRUE_POSITIVE
        elif (overlaps[d] & same[d] & gt_ignore).any():
            outcomes[d] = IGNORED
    if across_classes:
        for d in np.flatnonzero(outcomes == FALSE_POSITIVE):
            free = overlaps[d] & ~gt_ignore & ~taken
            if free.any():
                j = int(np.argmax(np.where(free, iou[d], -1.0)))
                taken[j], taken_by[d] = True, j
    return outcomes, taken_by, taken


def match_detections(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    iou_threshold: float = 0.5,
    image_ids: list[int] | None = None,
    score_threshold: float = 0.0,
    across_classes: bool = False,
) -> Matching:
    """Greedy matching of the detections scoring at least ``score_threshold`` on ``image_ids``
    (default: every picture of ``coco_gt``); detections of other pictures or of categories the
    annotations lack are left out, as COCOeval leaves them out."""
    category_ids = sorted(int(c) for c in coco_gt.getCatIds())
    known = set(category_ids)
    images = sorted(set(coco_gt.getImgIds() if image_ids is None else image_ids))
    by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    for r in results:
        wanted = r["category_id"] in known and r["image_id"] in by_image
        if wanted and r["score"] >= score_threshold:
            by_image[r["image_id"]].append(r)
    num_gt = dict.fromkeys(category_ids, 0)
    scores, categories, outcomes, gt_category, missed = [], [], [], [], []
    for image in images:
        anns = coco_gt.imgToAnns.get(image, [])
        gt_boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        gt_cats = np.array([a["category_id"] for a in anns], dtype=np.int64)
        gt_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        gt_ignore = gt_crowd | np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
        gt_ignore |= ~np.isin(gt_cats, category_ids)
        for c in gt_cats[~gt_ignore].tolist():
            num_gt[c] += 1
        dets = by_image[image]
        det_scores = np.array([d["score"] for d in dets], dtype=np.float64)
        order = np.argsort(-det_scores, kind="mergesort")  # stable, as COCOeval sorts
        boxes = np.array([dets[i]["bbox"] for i in order], dtype=np.float64).reshape(-1, 4)
        cats = np.array([dets[i]["category_id"] for i in order], dtype=np.int64)
        image_outcomes, taken_by, taken = _match_image(
            boxes, cats, gt_boxes, gt_cats, gt_crowd, gt_ignore, iou_threshold, across_classes
        )
        scores.append(det_scores[order])
        categories.append(cats)
        outcomes.append(image_outcomes)
        gt_category.append(
            np.where(taken_by >= 0, gt_cats[np.maximum(taken_by, 0)], -1)
            if len(gt_cats)
            else np.full(len(cats), -1)
        )
        missed.append(gt_cats[~gt_ignore & ~taken])

    def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    scores_all = joined(scores, np.float64)
    order = np.argsort(-scores_all, kind="mergesort")
    return Matching(
        scores=scores_all[order],
        categories=joined(categories, np.int64)[order],
        outcomes=joined(outcomes, np.int64)[order],
        gt_category=joined(gt_category, np.int64)[order],
        missed=joined(missed, np.int64),
        num_gt=num_gt,
    )


def confusion_matrix(
    matching: Matching, category_ids: list[int], class_names: dict[int, str]
) -> ConfusionMatrix:
    """The confusion matrix of a matching made ``across_classes``: true positives on the
    diagonal, wrong-class detections off it, then the background row and column."""
    index = {c: k for k, c in enumerate(category_ids)}
    background = len(category_ids)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    for predicted, truth, outcome in zip(
        matching.categories.tolist(),
        matching.gt_category.tolist(),
        matching.outcomes.tolist(),
        strict=True,
    ):
        if outcome == IGNORED:
            continue
        matrix[index.get(truth, background), index[predicted]] += 1
    for truth in matching.missed.tolist():
        matrix[index[truth], background] += 1
    labels = [class_names.get(c, str(c)) for c in category_ids] + ["background"]
    return ConfusionMatrix(labels, matrix)


def f1_sweep(matching: Matching, thresholds: tuple[float, ...] = SWEEP) -> list[dict[str, float]]:
    """Overall precision, recall and F1 at each score threshold."""
    sweep = []
    for threshold in thresholds:
        total = sum(matching.counts(threshold).values(), Counts())
        sweep.append(
            {
                "score_threshold": threshold,
                "f1": total.f1,
                "precision": total.precision,
                "recall": total.recall,
            }
        )
    return sweep


def threshold_metrics(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    score_threshold: float,
    iou_threshold: float = 0.5,
    image_ids: list[int] | None = None,
) -> ThresholdMetrics:
    """Precision, recall and F1 (overall and per class) and the confusion matrix of the
    detections scoring at least ``score_threshold``, boxes matching at IoU >= ``iou_threshold``;
    with the F1 of every score threshold of :data:`SWEEP`."""
    category_ids = sorted(int(c) for c in coco_gt.getCatIds())
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in coco_gt.loadCats(category_ids)}
    everything = match_detections(coco_gt, results, iou_threshold, image_ids)
    per_class = everything.counts(score_threshold)
    kept = match_detections(
        coco_gt, results, iou_threshold, image_ids, score_threshold, across_classes=True
    )
    return ThresholdMetrics(
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        overall=sum(per_class.values(), Counts()),
        per_class=per_class,
        class_names=names,
        confusion=confusion_matrix(kept, category_ids, names),
        sweep=f1_sweep(everything),
    )
