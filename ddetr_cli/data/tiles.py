"""Cutting a picture into overlapping tiles: the grid, and boxes seen through a tile.

Shared by sliced inference (``inference/slicing.py``: ``--slice H W``) and by ``ddetr data
slice`` (``data/slice.py``), so a model trained on tiles sees the same tiles it is run on.

The grid, per axis: a picture no longer than the tile is one tile (the picture itself, smaller
than asked). Otherwise neighbours overlap by at least ``ceil(overlap * tile)`` pixels (at most
tile - 1), the first tile starts at 0, the last ends at the picture's edge, and the starts in
between are spread evenly (rounded), so every pixel is covered and the overlaps are as equal as
whole pixels allow. All tiles of a picture have the same size, so they batch without padding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ddetr_cli.errors import UsageError


class Tile(NamedTuple):
    """A tile's pixels in its picture: columns x0..x1-1, rows y0..y1-1."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def check_tiling(tile: tuple[int, int], overlap: float, option: str = "--slice") -> None:
    """UsageError, in one line, for a tile size below 1 or an overlap outside [0, 1)."""
    if len(tile) != 2 or min(tile) < 1:
        sides = " ".join(str(side) for side in tile)
        raise UsageError(f"{option} H W: a tile's sides must be at least 1 pixel, got {sides}")
    if not 0.0 <= overlap < 1.0:
        raise UsageError(f"--overlap must be in [0, 1), got {overlap:g}")


def overlap_pixels(tile: int, overlap: float) -> int:
    """The least overlap of neighbouring tiles along an axis: ceil(overlap * tile), at most
    tile - 1 (a 1-pixel tile cannot overlap)."""
    # round() first: 0.1 * 30 is 3.0000000000000004, whose ceiling would be 4.
    return min(tile - 1, math.ceil(round(overlap * tile, 9)))


def axis_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Where the tiles of one axis start (see the module's docstring)."""
    if size <= tile:
        return [0]
    step = tile - overlap_pixels(tile, overlap)
    gaps = -(-(size - tile) // step)  # ceil: the fewest gaps of at most `step` pixels
    # Integer rounding of i * (size - tile) / gaps: consecutive starts differ by at most
    # ceil((size - tile) / gaps) <= step, so neighbours overlap by at least tile - step.
    return [(i * (size - tile) + gaps // 2) // gaps for i in range(gaps + 1)]


def tile_grid(height: int, width: int, tile: tuple[int, int], overlap: float) -> list[Tile]:
    """The tiles of a ``height`` x ``width`` picture for a ``tile`` of (height, width), row by
    row. A tile larger than the picture gives one tile, the picture itself."""
    check_tiling(tile, overlap)
    tile_h, tile_w = min(tile[0], height), min(tile[1], width)
    rows = axis_starts(height, tile_h, overlap)
    columns = axis_starts(width, tile_w, overlap)
    return [Tile(x, y, x + tile_w, y + tile_h) for y in rows for x in columns]


def shift_boxes(boxes: Tensor, tile: Tile) -> Tensor:
    """xyxy boxes in a tile's pixels -> the same boxes in its picture's pixels."""
    offset = torch.tensor([tile.x0, tile.y0, tile.x0, tile.y0], dtype=boxes.dtype)
    return boxes + offset.to(boxes.device)


def boxes_in_tile(boxes: Tensor, tile: Tile, min_visible: float) -> tuple[Tensor, Tensor]:
    """Picture xyxy boxes seen through ``tile``: (the kept boxes clipped to the tile, in the
    tile's pixels; the indices of the kept boxes). A box is kept when at least ``min_visible``
    of its area lies inside the tile (and some of it does)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    cx0, cy0 = x0.clamp(tile.x0, tile.x1), y0.clamp(tile.y0, tile.y1)
    cx1, cy1 = x1.clamp(tile.x0, tile.x1), y1.clamp(tile.y0, tile.y1)
    visible = (cx1 - cx0) * (cy1 - cy0)
    area = (x1 - x0) * (y1 - y0)
    keep = (visible > 0) & (visible >= min_visible * area)
    clipped = torch.stack([cx0, cy0, cx1, cy1], dim=-1)[keep]
    offset = torch.tensor([tile.x0, tile.y0, tile.x0, tile.y0], dtype=clipped.dtype)
    return clipped - offset, keep.nonzero().flatten()
