"""`ddetr bench --slice H W`: pictures per second of sliced inference (``inference.slicing``),
tiles included, at each ``--batch-size`` (tiles per forward pass).

The whole pipeline is timed per picture, as `ddetr predict --slice` runs it: cutting the
tiles, the evaluation transform, the forward passes, post-processing, shifting the boxes back
and merging. Batch 1 is the tiles run one by one; the gain of a batch is its pictures per
second over batch 1's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ddetr_cli.bench.timing import percentile, time_forward
from ddetr_cli.data.tiles import tile_grid
from ddetr_cli.inference.slicing import SlicedDetector, SliceOptions

# The picture sliced when neither --image-size nor --images is given: a large one.
DEFAULT_PICTURE = (2048, 2048)


def random_picture(size: tuple[int, int]) -> torch.Tensor:
    """A fixed random (3, H, W) uint8 picture: content does not change the work of the model."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, *size), generator=generator, dtype=torch.uint8)


def sliced_speed(
    model: nn.Module,
    recipe: dict[str, Any],
    picture: torch.Tensor,
    options: SliceOptions,
    device: torch.device,
    batch_sizes: list[int],
    warmup: int,
    iters: int,
    dtype: str = "fp32",
) -> dict[str, Any]:
    """Time sliced inference of ``picture`` (3, H, W) uint8 at each of ``batch_sizes``; the
    JSON-ready ``slice`` section of the bench report."""
    height, width = picture.shape[-2:]
    tiles = len(tile_grid(height, width, options.tile, options.overlap))
    results = []
    for batch_size in batch_sizes:
        detector = SlicedDetector.for_recipe(model, options, recipe, device, batch_size, dtype)
        latencies, total, _first = time_forward(
            lambda d=detector: d.detect(picture), device, warmup, iters
        )
        results.append(
            {
                "batch_size": batch_size,
                "pictures_per_s": round(iters / total, 4),
                "tiles_per_s": round(tiles * iters / total, 2),
                "seconds_per_picture_p50": round(percentile(latencies, 50), 4),
                "seconds_per_picture_p90": round(percentile(latencies, 90), 4),
            }
        )
    one_by_one = next((r["pictures_per_s"] for r in results if r["batch_size"] == 1), None)
    for r in results:
        r["gain_vs_batch_1"] = round(r["pictures_per_s"] / one_by_one, 3) if one_by_one else None
    return {
        "options": options.to_json(),
        "picture_size": [height, width],
        "tiles_per_picture": tiles,
        "dtype": dtype,
        "protocol": {
            "warmup_pictures": warmup,
            "timed_pictures": iters,
            "timed": "cut, transform, forward, post-process, shift back, merge",
            "device": str(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
        },
        "results": results,
    }
