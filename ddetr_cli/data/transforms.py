"""The transforms: the official evaluation resize and normalisation (``eval_size``,
``eval_transform``, used by predict, evaluate, bench, visualize and export), the training
augmentation (docs/design.md#augmentation) and target conversion, on transforms.v2.

Pictures are ``tv_tensors.Image`` uint8 and boxes ``tv_tensors.BoundingBoxes`` in absolute xyxy,
so every geometric transform moves the boxes with the picture. The output is a normalised float
picture and boxes in normalised cxcywh of the unpadded augmented picture, as the model's losses
expect.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import box_convert

# ImageNet statistics of RGB in [0, 1], as the official model used (docs/design.md#inputs).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_size(h: int, w: int, min_size: int = 800, max_size: int | None = 1333) -> tuple[int, int]:
    """(new_h, new_w) of the official evaluation resize (docs/design.md#resize-rule).

    The short side becomes ``min_size`` unless that makes the long side exceed ``max_size``, in
    which case the short side becomes ``round(max_size * short / long)``. The long side is
    ``int(s * long / short)`` (floor). A picture whose short side already has the target size is
    returned unchanged. Example: 480x640 -> 800x1066; 1000x3000 -> 444x1332.
    """
    short, long = (h, w) if h <= w else (w, h)
    size = min_size
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if short == size:
        return h, w
    size = max(size, 1)  # only matters for absurd aspect ratios, where the rule gives 0
    new_long = int(size * long / short)
    return (size, new_long) if h <= w else (new_long, size)


def eval_transform(
    image: torch.Tensor, min_size: int = 800, max_size: int | None = 1333
) -> torch.Tensor:
    """Resize a (3, H, W) uint8 picture with ``eval_size`` and normalise it with ImageNet stats.

    The resize is bilinear with antialiasing on the uint8 tensor, which closely matches the
    official PIL resize (PIL antialiases when it downscales). Returns float32 (3, h, w).
    """
    new_h, new_w = eval_size(image.shape[-2], image.shape[-1], min_size, max_size)
    if (new_h, new_w) != tuple(image.shape[-2:]):
        image = TF.resize(
            image, [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True
        )
    image = TF.to_dtype(image, torch.float32, scale=True)
    return TF.normalize(image, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))


AUGMENTATIONS = ("paper", "flip", "none")
# The paper's multi-scale training: short side 480..800 step 32, long side at most 1333.
TRAIN_SCALES = list(range(480, 801, 32))
CROP_PRE_SCALES = [400, 500, 600]
CROP_MIN, CROP_MAX = 384, 600
MAX_SIZE = 1333


class RandomSizeCrop(T.Transform):
    """Crop a random region with width in [min_size, min(W, max_size)] and height likewise,
    at a random position (the official RandomSizeCrop); boxes are clipped by the crop."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        self.min_size = min_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = T.query_size(flat_inputs)
        w = int(torch.randint(min(self.min_size, width), min(width, self.max_size) + 1, ()))
        h = int(torch.randint(min(self.min_size, height), min(height, self.max_size) + 1, ()))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return {"top": top, "left": left, "height": h, "width": w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.crop(inpt, **params)

    # torchvision < 0.21 names the hooks with a leading underscore.
    _get_params = make_params
    _transform = transform


def train_transform(augment: str) -> T.Transform:
    """The geometric augmentation of a training picture (before normalisation)."""
    if augment == "none":
        return T.Identity()
    flip = T.RandomHorizontalFlip(0.5)
    if augment == "flip":
        return flip
    multiscale = T.RandomShortestSize(TRAIN_SCALES, max_size=MAX_SIZE, antialias=True)
    crop_branch = T.Compose(
        [
            T.RandomShortestSize(CROP_PRE_SCALES, antialias=True),
            RandomSizeCrop(CROP_MIN, CROP_MAX),
            T.RandomShortestSize(TRAIN_SCALES, max_size=MAX_SIZE, antialias=True),
        ]
    )
    return T.Compose([flip, T.RandomChoice([multiscale, crop_branch])])


def eval_resize(image: Tensor, boxes: Tensor, min_size: int, max_size: int) -> tuple[Any, Any]:
    """The evaluation resize of ddetr predict (``images.eval_size``), applied to boxes too."""
    new_h, new_w = eval_size(image.shape[-2], image.shape[-1], min_size, max_size)
    if (new_h, new_w) == tuple(image.shape[-2:]):
        return image, boxes
    return TF.resize(image, [new_h, new_w], antialias=True), TF.resize(boxes, [new_h, new_w])


def finish(image: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Drop degenerate boxes, normalise the picture, make boxes normalised cxcywh."""
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, labels = boxes[keep], labels[keep]
    h, w = image.shape[-2:]
    pixels = TF.to_dtype(image.as_subclass(Tensor), torch.float32, scale=True)
    pixels = TF.normalize(pixels, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    cxcywh = box_convert(boxes.as_subclass(Tensor).float(), "xyxy", "cxcywh") / scale
    target = {"boxes": cxcywh, "labels": labels, "size": torch.tensor([h, w])}
    return pixels, target


def wrap(image: Tensor, boxes_xyxy: Tensor) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes]:
    """tv_tensors for a (3, H, W) uint8 picture and its absolute xyxy boxes."""
    h, w = image.shape[-2:]
    return tv_tensors.Image(image), tv_tensors.BoundingBoxes(
        boxes_xyxy.reshape(-1, 4).float(), format="XYXY", canvas_size=(h, w)
    )
