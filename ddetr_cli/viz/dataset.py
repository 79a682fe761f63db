"""The dataset view: ground truth on training pictures as stored and as augmented, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ddetr_cli.viz.draw import draw_detections, to_pil


def _side_by_side(pictures: list[Image.Image], gap: int = 8) -> Image.Image:
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    sheet = Image.new("RGB", (width, max(p.height for p in pictures)), (255, 255, 255))
    x = 0
    for picture in pictures:
        sheet.paste(picture, (x, 0))
        x += picture.width + gap
    return sheet


def dataset_pictures(
    recipe: dict[str, Any], out_dir: Path, count: int = 8, epoch: int = 0
) -> list[Path]:
    """Ground-truth boxes on the first `count` training pictures as stored (left) and as one
    augmented training sample of `epoch` (right), to check data and augmentation."""
    from torchvision.ops import box_convert

    from ddetr_cli.data import build_datasets
    from ddetr_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    splits = build_datasets(recipe, train=True)
    dataset, names = splits.train, splits.class_names or None
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(min(count, len(dataset))):
        raw, boxes, labels = dataset.load(index)
        # Ground truth has no score: class names only.
        left = draw_detections(raw, boxes, labels, class_names=names)
        pixels, target = dataset[(epoch, index)]
        augmented = ((pixels * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        h, w = augmented.shape[-2:]
        xyxy = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
        right = draw_detections(augmented, xyxy, target["labels"], class_names=names)
        path = out_dir / f"{dataset.image_id(index)}_dataset.png"
        _side_by_side([to_pil(left), to_pil(right)]).save(path)
        paths.append(path)
    return paths
