"""Merging the detections of a sliced picture (its tiles and, optionally, the whole picture),
class by class, so that an object found more than once is reported once.

Detections are grouped greedily: in descending score, a detection not yet in a group starts
one and takes every lower-scoring detection of its class, not yet in a group, that overlaps
it by more than the threshold. The overlap is IoU (intersection over union) or IoS
(intersection over the smaller box's area): a box cut by a tile edge lies inside the object's
whole box, so its IoS with it is close to 1 while its IoU can be small.

- ``nms``: a group is its best-scoring detection (torchvision's ``batched_nms`` for IoU).
- ``nmm`` (non-maximum merge, after SAHI's): a group becomes one detection with the best score,
  whose box is put together side by side. A side of a box that lies on a tile edge inside the
  picture (within ``EDGE_MARGIN`` of the tile's side) is "cut": the object goes on beyond it.
  Each side of the merged box is the best-scoring detection's, unless that side is cut; then
  it is the side of the best-scoring member whose side there is not cut, or, when all are cut,
  the farthest one. So the pieces of an object cut by tile edges become the object's box,
  while a complete box is never stretched by a lower-scoring one (SAHI's union would let any
  overlapping box, however poor, widen it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_area, box_iou

MERGES = ("nms", "nmm")
MATCHES = ("iou", "ios")
# A box side within this share of the tile's side from a tile edge inside the picture is cut.
EDGE_MARGIN = 0.02
_CHUNK = 1024  # rows of the pairwise overlap matrix computed at once


def pairwise_overlaps(a: Tensor, b: Tensor, match: str) -> Tensor:
    """IoU or IoS of every xyxy box of ``a`` (N, 4) with every one of ``b`` (M, 4): (N, M)."""
    if match == "iou":
        return box_iou(a, b)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    smaller = torch.minimum(box_area(a)[:, None], box_area(b)[None, :])
    return intersection / smaller.clamp(min=torch.finfo(a.dtype).tiny)


def cut_sides(boxes: Tensor, tile: tuple[int, int, int, int], picture: tuple[int, int]) -> Tensor:
    """(N, 4) bool: which sides (x0, y0, x1, y1) of xyxy ``boxes``, in picture pixels, lie on
    an edge of ``tile`` (x0, y0, x1, y1) that is inside the ``picture`` (height, width)."""
    x0, y0, x1, y1 = tile
    height, width = picture
    mx, my = EDGE_MARGIN * (x1 - x0), EDGE_MARGIN * (y1 - y0)
    return torch.stack(
        [
            (boxes[:, 0] <= x0 + mx) & (x0 > 0),
            (boxes[:, 1] <= y0 + my) & (y0 > 0),
            (boxes[:, 2] >= x1 - mx) & (x1 < width),
            (boxes[:, 3] >= y1 - my) & (y1 < height),
        ],
        dim=1,
    )


def _later_neighbours(boxes: Tensor, match: str, threshold: float) -> list[np.ndarray]:
    """For each box (in descending score), the later boxes that overlap it by more than
    ``threshold``; computed ``_CHUNK`` rows at a time to bound the memory."""
    pairs = []
    for start in range(0, len(boxes), _CHUNK):
        above = pairwise_overlaps(boxes[start : start + _CHUNK], boxes, match) > threshold
        rows, columns = above.nonzero(as_tuple=True)
        later = columns > rows + start
        pairs.append((rows[later] + start, columns[later]))
    rows = torch.cat([r for r, _ in pairs]).numpy()
    columns = torch.cat([c for _, c in pairs]).numpy()  # row-major: grouped by row already
    return np.split(columns, np.cumsum(np.bincount(rows, minlength=len(boxes)))[:-1])


def greedy_groups(
    boxes: Tensor, scores: Tensor, labels: Tensor, match: str, threshold: float
) -> list[Tensor]:
    """The groups of the module's docstring, as index tensors, best score first; their first
    members are what NMS keeps."""
    order = torch.argsort(scores, descending=True, stable=True)
    groups = []
    for label in labels.unique():
        index = order[labels[order] == label]
        neighbours = _later_neighbours(boxes[index], match, threshold)
        free = np.ones(len(index), dtype=bool)
        for i, others in enumerate(neighbours):
            if not free[i]:
                continue
            taken = others[free[others]]
            free[taken] = False
            groups.append(index[torch.from_numpy(np.concatenate([[i], taken]))])
    return groups


def merged_box(boxes: Tensor, cut: Tensor) -> Tensor:
    """One box from a group's boxes (best score first) and their cut sides (module docstring)."""
    box = boxes[0].clone()
    for side in range(4):
        if not cut[0, side]:
            continue
        seen = (~cut[:, side]).nonzero().flatten()
        if len(seen):
            box[side] = boxes[seen[0], side]
        else:  # every piece is cut there: the farthest reaches closest to the object's side
            box[side] = boxes[:, side].min() if side < 2 else boxes[:, side].max()
    return box


def merge_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    merge: str,
    match: str,
    threshold: float,
    cut: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(boxes, scores, labels) after merging (see the module's docstring), best score first.
    ``boxes`` are xyxy (N, 4) on the CPU; ``cut`` (N, 4) says which of their sides lie on a
    tile edge (``cut_sides``; None: no side does)."""
    if merge == "nms" and match == "iou":
        keep = batched_nms(boxes, scores, labels, threshold)
        return boxes[keep], scores[keep], labels[keep]
    groups = greedy_groups(boxes, scores, labels, match, threshold)
    if not groups:
        return boxes, scores, labels
    firsts = torch.stack([group[0] for group in groups])
    if merge == "nms" or cut is None:
        kept = boxes[firsts]
    else:
        kept = torch.stack(
            [merged_box(boxes[g], cut[g]) if len(g) > 1 else boxes[g[0]] for g in groups]
        )
    order = torch.argsort(scores[firsts], descending=True, stable=True)
    return kept[order], scores[firsts][order], labels[firsts][order]
