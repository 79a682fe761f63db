"""Drawing labelled boxes on a picture with PIL, sized to the picture.

Line width and font size follow the picture's shorter side, so labels read the same on a 128-pixel
thumbnail and on an 8000x6000 photo shown on a screen; labels stay inside the picture (moved left at
the right edge, into the box at the top edge). PIL rather than torchvision's draw_bounding_boxes:
that one sizes only TrueType fonts read from a file and always puts the label at the box's corner.
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


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


def label_text(
    label: int, score: float | None = None, class_names: Sequence[str] | None = None
) -> str:
    """'cat 0.87', or '#17 0.87' when the class has no name; 'cat' with no score (ground truth)."""
    name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else None
    name = name if name else f"#{label}"
    return name if score is None else f"{name} {score:.2f}"


def drawing_sizes(width: int, height: int) -> tuple[int, int]:
    """(line width, font size) in pixels for a picture: both grow with its shorter side, with
    floors that keep boxes visible and labels readable on a 128-pixel picture."""
    side = min(width, height)
    return max(2, round(side / 300)), max(10, round(side / 45))


@functools.lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's built-in font at `size` pixels (Pillow >= 10.1 sizes it; older ones: fixed size)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # no FreeType or an old Pillow
        return ImageFont.load_default()


def label_box(
    anchor: tuple[float, float],
    text_size: tuple[int, int],
    picture_size: tuple[int, int],
    below: float | None = None,
) -> tuple[int, int]:
    """Top-left corner of a label of `text_size` (w, h) for a box whose top-left corner is
    `anchor`: just above the box, or at `below` (the box's bottom, so the label does not cover
    the object; default the anchor's y) when there is no room above; moved left and up as
    needed to stay inside `picture_size`."""
    (x, y), (w, h), (width, height) = anchor, text_size, picture_size
    top = y - h if y - h >= 0 else (y if below is None else below)
    left = min(x, width - w)
    return max(0, round(left)), max(0, round(min(top, height - h)))


def draw_label(
    draw: ImageDraw.ImageDraw,
    picture_size: tuple[int, int],
    anchor: tuple[float, float],
    text: str,
    background: tuple[int, int, int],
    size: int,
    below: float | None = None,
) -> tuple[int, int, int, int]:
    """`text` at `size` pixels on a `background` plate placed by `label_box` in a picture of
    `picture_size` (w, h); returns the plate's corners."""
    face = font(size)
    left, _, right, _ = draw.textbbox((0, 0), text, font=face)
    _, top, _, bottom = draw.textbbox((0, 0), "Ag", font=face)  # same height for every text
    pad = max(1, size // 6)
    plate = (right - left + 2 * pad, bottom - top + 2 * pad)
    x, y = label_box(anchor, plate, picture_size, below)
    draw.rectangle([x, y, x + plate[0] - 1, y + plate[1] - 1], fill=background)
    draw.text((x + pad - left, y + pad - top), text, fill=_text_color(background), font=face)
    return x, y, x + plate[0] - 1, y + plate[1] - 1


def draw_detections(
    image: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    scores: torch.Tensor | Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """A copy of a (3, H, W) uint8 picture with labelled boxes (absolute xyxy pixels) drawn on it.

    Boxes are clipped to the picture (the model's boxes are not), non-finite ones are skipped,
    and the highest scores are drawn last so they stay on top; every label is drawn after every
    box, so no line crosses a label. Without `scores` (ground truth) labels are class names only.
    """
    height, width = image.shape[-2:]
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).detach().cpu().reshape(-1, 4)
    labels = [int(v) for v in torch.as_tensor(labels).reshape(-1).tolist()]
    values = None if scores is None else torch.as_tensor(scores).reshape(-1).tolist()
    keep = [i for i in range(len(boxes)) if torch.isfinite(boxes[i]).all()]
    if values is not None:
        keep.sort(key=lambda i: values[i])
    if not keep:
        return image.clone()
    boxes = boxes[keep]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
    # Clipping can cross the corners of a box that lies outside; keep it well-formed.
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
    pixels = image.detach().cpu().expand(3, -1, -1).permute(1, 2, 0).contiguous()
    picture = Image.fromarray(pixels.numpy())
    draw = ImageDraw.Draw(picture)
    line, size = drawing_sizes(width, height)
    colors = [class_color(labels[i]) for i in keep]
    for box, color in zip(boxes.tolist(), colors, strict=True):
        draw.rectangle(box, outline=color, width=line)
    for i, box, color in zip(keep, boxes.tolist(), colors, strict=True):
        text = label_text(labels[i], None if values is None else float(values[i]), class_names)
        # Text on a box-coloured plate stays readable on any picture.
        draw_label(draw, picture.size, (box[0], box[1]), text, color, size, box[3] + 1)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)
