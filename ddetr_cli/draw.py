"""Drawing detections on a picture (torchvision's draw_bounding_boxes does the drawing)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import torch
from torchvision.utils import draw_bounding_boxes


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, saturated colour per class: hues spread by the golden ratio, so neighbouring
    class indices get clearly different colours."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def _text_color(background: tuple[int, int, int]) -> str:
    """Black on light label backgrounds, white on dark ones."""
    r, g, b = background
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def label_text(label: int, score: float, class_names: Sequence[str] | None = None) -> str:
    """'cat 0.87', or '#17 0.87' when the class has no name."""
    name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else None
    return f"{name if name else f'#{label}'} {score:.2f}"


def draw_detections(
    image: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    scores: torch.Tensor | Sequence[float],
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """A copy of a (3, H, W) uint8 picture with labelled boxes (absolute xyxy pixels) drawn on it.

    Boxes are clipped to the picture (the model's boxes are not), non-finite ones are skipped,
    and the highest scores are drawn last so they stay on top.
    """
    height, width = image.shape[-2:]
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).detach().cpu().reshape(-1, 4)
    labels = [int(v) for v in torch.as_tensor(labels).reshape(-1).tolist()]
    scores = [float(v) for v in torch.as_tensor(scores).reshape(-1).tolist()]
    keep = [i for i in range(len(boxes)) if torch.isfinite(boxes[i]).all()]
    keep.sort(key=lambda i: scores[i])
    if not keep:
        return image.clone()
    boxes = boxes[keep]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
    # Clipping can cross the corners of a box that lies outside; keep it well-formed.
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
    colors = [class_color(labels[i]) for i in keep]
    return draw_bounding_boxes(
        image.detach().cpu(),
        boxes,
        labels=[label_text(labels[i], scores[i], class_names) for i in keep],
        colors=colors,
        width=max(2, round(min(height, width) / 300)),
        # Text on a box-coloured background stays readable on any picture.
        fill_labels=True,
        label_colors=[_text_color(c) for c in colors],
    )
