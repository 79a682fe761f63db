"""Write the built-in shapes data as a COCO-format folder (the standard COCO layout)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image

from ddetr_cli.data import shapes
from ddetr_cli.io import write_json


def write_shapes_coco(
    out_dir: str | Path,
    train: int,
    val: int,
    seed: int = 0,
    on_picture: Callable[[], None] | None = None,
) -> dict[str, Path]:
    """out_dir/{train2017,val2017}/NNNNNN.png and out_dir/annotations/instances_*2017.json:
    train pictures 0..train-1 of the split with ``seed``, val pictures 0..val-1 of the fixed
    val split, so ``data.root=out_dir`` trains on exactly the built-in data."""
    out_dir = Path(out_dir)
    written = {}
    for split, count, split_seed in (("train", train, seed), ("val", val, shapes.VAL_SEED)):
        if count == 0:
            continue
        folder = out_dir / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            picture = shapes.make_picture(split_seed, i)
            Image.fromarray(picture.image).save(folder / f"{i:06d}.png")
            if on_picture:
                on_picture()
        path = out_dir / "annotations" / f"instances_{split}2017.json"
        write_json(shapes.coco_dict(split_seed, count), path)
        written[split] = path
    return written
