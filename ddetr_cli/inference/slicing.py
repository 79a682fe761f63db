"""Sliced inference (``--slice H W``): small objects on large pictures.

Each picture is cut into overlapping tiles (``data.tiles.tile_grid``) that the model sees at
their own resolution, ``--batch-size`` tiles per forward pass; each tile's boxes are shifted
back into the picture's pixels; optionally (``--full``) the whole picture is run too, at the
usual evaluation resize, for objects larger than a tile; then the detections of all of these
passes are merged class by class (``inference.merge``) and the best ``max_detections`` kept.

Tile scale: a tile goes through the evaluation resize (``--min-size``/``--max-size``) only when
that makes it larger (a 512-pixel tile for a model evaluated at 800); it is never made smaller,
so a tile's objects reach the model at their own size or larger. A picture that is a single
pass (one tile, and no whole-picture pass) has nothing to merge: its detections are the
model's, as without ``--slice``.

The model is called as everywhere else (``model(batch)``, then ``post_process``), so every
``--weights`` kind works, an exported ``.onnx`` file included.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ddetr_cli.data.tiles import Tile, check_tiling, shift_boxes, tile_grid
from ddetr_cli.data.transforms import eval_size, eval_transform
from ddetr_cli.errors import UsageError
from ddetr_cli.evaluation.coco import EvaluationRun, model_detections
from ddetr_cli.inference.merge import MATCHES, MERGES, cut_sides, merge_detections

# Detections kept per picture after merging: a large picture holds more objects than COCO's
# 100 per picture.
DEFAULT_MAX_DETECTIONS = 500
# Detections of a picture merged: this many times max_detections, the best (see detect()).
MERGE_FACTOR = 4


@dataclass(frozen=True)
class SliceOptions:
    """How pictures are sliced and their detections merged; checked when made (UsageError)."""

    tile: tuple[int, int]  # (height, width) in picture pixels
    overlap: float = 0.2  # of a tile's side, shared by neighbouring tiles
    full: bool = False  # also run the whole picture at the evaluation resize
    merge: str = "nmm"  # nms or nmm (see inference.merge)
    match: str = "ios"  # iou or ios
    match_threshold: float = 0.5
    max_detections: int = DEFAULT_MAX_DETECTIONS

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", tuple(int(side) for side in self.tile))
        check_tiling(self.tile, self.overlap)
        if self.merge not in MERGES:
            raise UsageError(f"--merge must be one of {', '.join(MERGES)}, got {self.merge!r}")
        if self.match not in MATCHES:
            raise UsageError(f"--match must be one of {', '.join(MATCHES)}, got {self.match!r}")
        if not 0.0 <= self.match_threshold <= 1.0:
            raise UsageError(f"--match-threshold must be in [0, 1], got {self.match_threshold:g}")
        if self.max_detections < 1:
            raise UsageError(f"--max-detections must be at least 1, got {self.max_detections}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tile": list(self.tile)}


def tile_resize(tile: Tile, min_size: int, max_size: int | None) -> tuple[int, int | None]:
    """The (min_size, max_size) that ``eval_transform`` gets for a tile: the evaluation resize
    when it enlarges the tile, else the tile's own short side (no resize at all)."""
    new_h, _ = eval_size(tile.height, tile.width, min_size, max_size)
    if new_h > tile.height:
        return min_size, max_size
    return min(tile.height, tile.width), None


class SlicedDetector:
    """Sliced detection with a model: called on a list of (3, H, W) uint8 pictures, gives one
    ``{"scores", "labels", "boxes"}`` dict per picture (xyxy boxes in the picture's pixels, on
    the CPU, best score first), as ``post_process`` does for whole pictures. Counts the
    pictures and tiles it ran (``pictures``, ``tiles``) and the seconds it took."""

    def __init__(
        self,
        model: nn.Module,
        options: SliceOptions,
        sizes: tuple[int, int],
        num_detections: int = 100,
        device: torch.device | str = "cpu",
        batch_size: int = 1,
        amp: str = "off",
        min_score: float = 0.0,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        self.model = model
        self.options = options
        self.min_size, self.max_size = sizes
        self.device = torch.device(device)
        # Each pass (tile or whole picture) keeps num_detections, as evaluation does.
        self.run = EvaluationRun(self.device, amp, num_detections)
        self.batch_size = batch_size
        self.min_score = min_score  # detections below it are dropped before merging
        self.pictures = 0
        self.tiles = 0
        self.seconds = 0.0

    @classmethod
    def for_recipe(
        cls,
        model: nn.Module,
        options: SliceOptions,
        recipe: dict[str, Any],
        device: torch.device | str,
        batch_size: int,
        amp: str | None = None,
    ) -> SlicedDetector:
        """A detector at the recipe's evaluation size and detection count, under the recipe's
        ``train.amp`` unless ``amp`` says otherwise."""
        data = recipe["data"]
        return cls(
            model,
            options,
            (data["eval_min_size"], data["eval_max_size"]),
            recipe["model"]["num_detections"],
            device,
            batch_size,
            recipe["train"]["amp"] if amp is None else amp,
        )

    def __call__(self, pictures: list[Tensor]) -> list[dict[str, Tensor]]:
        return [self.detect(picture) for picture in pictures]

    def _run(self, batch: Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections of one forward pass over a (N, 3, h, w) batch, boxes scaled to
        ``sizes`` (the passes' sizes in picture pixels), on the CPU."""
        target = torch.tensor(sizes, device=self.device)
        with torch.inference_mode():
            found = model_detections(self.model, batch.to(self.device), target, self.run)
        return [{k: v.cpu() for k, v in det.items()} for det in found]

    def _tile_passes(self, picture: Tensor, tiles: list[Tile]) -> list[dict[str, Tensor]]:
        """Every tile's detections, shifted into the picture's pixels, with their cut sides."""
        size = tuple(picture.shape[-2:])
        min_size, max_size = tile_resize(tiles[0], self.min_size, self.max_size)
        found = []
        for start in range(0, len(tiles), self.batch_size):
            chunk = tiles[start : start + self.batch_size]
            crops = torch.stack([picture[:, t.y0 : t.y1, t.x0 : t.x1] for t in chunk])
            batch = eval_transform(crops, min_size, max_size)
            detections = self._run(batch, [(t.height, t.width) for t in chunk])  # on the CPU
            for tile, det in zip(chunk, detections, strict=True):
                boxes = shift_boxes(det["boxes"], tile)
                found.append({**det, "boxes": boxes, "cut": cut_sides(boxes, tile, size)})
        return found

    def _needs_full_pass(self, picture: Tensor, tiles: list[Tile]) -> bool:
        """--full, unless the picture is one tile that the model already saw exactly as the
        whole-picture pass would show it."""
        if not self.options.full:
            return False
        height, width = picture.shape[-2:]
        if len(tiles) > 1:
            return True
        tile = tiles[0]
        as_tile = eval_size(height, width, *tile_resize(tile, self.min_size, self.max_size))
        return as_tile != eval_size(height, width, self.min_size, self.max_size)

    def detect(self, picture: Tensor) -> dict[str, Tensor]:
        """The merged detections of one (3, H, W) uint8 picture."""
        started = time.perf_counter()
        picture = picture.to(self.device)  # once: the tiles are cut and resized there
        height, width = picture.shape[-2:]
        tiles = tile_grid(height, width, self.options.tile, self.options.overlap)
        found = self._tile_passes(picture, tiles)
        if self._needs_full_pass(picture, tiles):
            whole = eval_transform(picture, self.min_size, self.max_size)[None]
            det = self._run(whole, [(height, width)])[0]
            found.append({**det, "cut": torch.zeros(len(det["boxes"]), 4, dtype=torch.bool)})
        boxes, scores, labels, cut = (
            torch.cat([d[k] for d in found]) for k in ("boxes", "scores", "labels", "cut")
        )
        # Merging goes in descending score: a detection cannot change the groups of better
        # ones, so only the best MERGE_FACTOR x max_detections can reach the output's places.
        above = (scores >= self.min_score).nonzero().flatten()
        best = above[torch.argsort(scores[above], descending=True, stable=True)]
        best = best[: MERGE_FACTOR * self.options.max_detections]
        boxes, scores, labels, cut = boxes[best], scores[best], labels[best], cut[best]
        if len(found) > 1:
            o = self.options
            boxes, scores, labels = merge_detections(
                boxes, scores, labels, o.merge, o.match, o.match_threshold, cut
            )
        keep = torch.argsort(scores, descending=True, stable=True)[: self.options.max_detections]
        self.pictures += 1
        self.tiles += len(tiles)
        self.seconds += time.perf_counter() - started
        return {"scores": scores[keep], "labels": labels[keep], "boxes": boxes[keep]}

    def summary(self) -> dict[str, Any]:
        """The options, and tiles and seconds per picture so far (JSON-ready)."""
        n = max(self.pictures, 1)
        return {
            **self.options.to_json(),
            "pictures": self.pictures,
            "tiles_per_picture": round(self.tiles / n, 2),
            "seconds_per_picture": round(self.seconds / n, 4),
        }
