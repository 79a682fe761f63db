"""Drawing labelled boxes on a picture with PIL, sized to the picture and readable on any of it.

Line width and font size follow the picture's shorter side, so labels read the same on a 128-pixel
thumbnail and on an 8000x6000 photo shown on a screen. Boxes are edged: a thin line of black or
white, whichever stands out from the picture there, runs around the class colour, and inside it
too where the object is of that colour, so a red box shows on a red object; label plates are
edged the same way. Labels are laid out so that none covers another: each goes to the first
free place beside its box (above, below, inside its top or bottom edge, left- or right-aligned;
right or left of it; always inside the picture), preferring places that cover no other box, in
a smaller font when every place is taken. PIL rather than torchvision's draw_bounding_boxes:
that one sizes only TrueType fonts read from a file and always puts the label at the box's
corner.
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1 (inclusive pixels)
SMALLEST_FONT = 8  # labels shrink to find a free place, not below this, nor below 60%
# Vivid colours for a box of no class (the attention view), picked to stand out from the picture.
VIVID = ((0, 230, 0), (255, 0, 255), (255, 220, 0), (0, 220, 255), (255, 120, 0), (40, 90, 255))


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, saturated colour per class: hues spread by the golden ratio, so neighbouring
    class indices get clearly different colours."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def _luminance(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _text_color(background: tuple[int, int, int]) -> str:
    """Black on light label backgrounds, white on dark ones."""
    return "black" if _luminance(background) > 140 else "white"


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


# ---------------------------------------------------------------- what contrasts


def _band_mean(pixels: np.ndarray, box: Rect, inside: bool, width: int = 2) -> np.ndarray:
    """The mean (3,) colour of the picture in a band `width` wide just outside the box's edge
    (or, `inside`, just inside a line `width` wide): its four strips, never the whole box."""
    height, picture_width = pixels.shape[:2]
    corners = [int(round(v)) for v in box]
    grow = -width if inside else width  # the band's outer edge
    x0, y0, x1, y1 = corners[0] - grow, corners[1] - grow, corners[2] + grow, corners[3] + grow
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(picture_width - 1, x1), min(height - 1, y1)
    if x1 < x0 or y1 < y0:  # a box too small to have an inside: the box itself
        x0, y0, x1, y1 = corners
        x0, y0 = min(max(0, x0), picture_width - 1), min(max(0, y0), height - 1)
        return pixels[y0 : max(y0, y1) + 1, x0 : max(x0, x1) + 1].reshape(-1, 3).mean(0)
    strips = [
        pixels[y0 : min(y0 + width, y1 + 1), x0 : x1 + 1],  # top
        pixels[max(y1 + 1 - width, y0 + width) : y1 + 1, x0 : x1 + 1],  # bottom
        pixels[y0 + width : y1 + 1 - width, x0 : min(x0 + width, x1 + 1)],  # left
        pixels[y0 + width : y1 + 1 - width, max(x1 + 1 - width, x0 + width) : x1 + 1],  # right
    ]
    values = np.concatenate([strip.reshape(-1, 3) for strip in strips]).astype(np.float64)
    return values.mean(0) if len(values) else pixels[y0, x0].astype(np.float64)


def _tone(mean: np.ndarray) -> tuple[int, int, int]:
    """Black on light surroundings, white on dark ones."""
    return (0, 0, 0) if _luminance(mean) > 110 else (255, 255, 255)


def contrasting_color(pixels: np.ndarray, box: Rect, line: int) -> tuple[int, int, int]:
    """The colour of ``VIVID`` farthest from the picture along the box's outline (for a box of
    no class: green would vanish on a green object)."""
    mean = (_band_mean(pixels, box, False, line) + _band_mean(pixels, box, True, line)) / 2
    return max(VIVID, key=lambda colour: float(np.square(np.subtract(colour, mean)).sum()))


def draw_box(
    draw: ImageDraw.ImageDraw, pixels: np.ndarray, box: Rect, color: tuple[int, int, int], line: int
) -> None:
    """A box in `color`, `line` wide (inside the box's edge), edged by a thinner black or white
    line around it, whichever stands out from the picture there; and inside it where the
    picture inside is close to `color` (a red box on a red object)."""
    x0, y0, x1, y1 = box
    edge = edge_width(line)
    outside = _tone(_band_mean(pixels, box, False, line))
    draw.rectangle([x0 - edge, y0 - edge, x1 + edge, y1 + edge], outline=outside, width=edge)
    inside = _band_mean(pixels, box, True, line)
    if min(x1 - x0, y1 - y0) > 2 * (line + edge) + 2 and np.linalg.norm(inside - color) < 150:
        draw.rectangle(
            [x0 + line, y0 + line, x1 - line, y1 - line], outline=_tone(inside), width=edge
        )
    draw.rectangle([x0, y0, x1, y1], outline=color, width=line)


def edge_width(line: int) -> int:
    """The black or white edge of boxes and label plates: a third of the line, at least 1."""
    return max(1, line // 3)


# ---------------------------------------------------------------- where labels go


def _overlaps(rects: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(N, M) areas shared by N and M rectangles (x0, y0, x1, y1, inclusive pixels)."""
    if len(others) == 0:
        return np.zeros((len(rects), 0))
    w = np.minimum(rects[:, None, 2], others[None, :, 2]) - np.maximum(
        rects[:, None, 0], others[None, :, 0]
    )
    h = np.minimum(rects[:, None, 3], others[None, :, 3]) - np.maximum(
        rects[:, None, 1], others[None, :, 1]
    )
    return np.clip(w + 1, 0, None) * np.clip(h + 1, 0, None)


def label_slots(
    box: Rect, plate: tuple[int, int], picture_size: tuple[int, int], line: int
) -> list[tuple[int, int]]:
    """Top-left corners a label `plate` (w, h) may take beside `box`, best first: above the box,
    below it, inside its top edge, inside its bottom edge (each left-, then right-aligned),
    right of it, left of it; moved into the picture where they stick out."""
    (x0, y0, x1, y1), (w, h), (width, height) = box, plate, picture_size
    rows = (y0 - h - 1, y1 + 2, y0 + line, y1 - line - h + 1)
    places = [(x, y) for y in rows for x in (x0 - 1, x1 - w + 2)]
    places += [(x1 + 2, y0 - 1), (x0 - w - 1, y0 - 1)]
    slots: list[tuple[int, int]] = []
    for x, y in places:
        slot = (
            int(round(max(0, min(x, width - w)))),
            int(round(max(0, min(y, height - h)))),
        )
        if slot not in slots:
            slots.append(slot)
    return slots


def nearby_slots(
    box: Rect, plate: tuple[int, int], picture_size: tuple[int, int]
) -> list[tuple[int, int]]:
    """Places for a label `plate` (w, h) within 4 plate heights of the place above the box's
    top-left corner, on a grid a quarter of the plate's height apart, the nearest first: where
    a label goes when no place beside its box is free."""
    (w, h), (width, height) = plate, picture_size
    step, reach = max(1, h // 4), 4 * h
    x, y = round(box[0]), round(box[1]) - h

    def axis(start: int, limit: int) -> set[int]:
        return {
            min(max(v, 0), max(limit, 0)) for v in range(start - reach, start + reach + 1, step)
        }

    places = [(px, py) for py in axis(y, height - h) for px in axis(x, width - w)]
    return sorted(places, key=lambda s: (s[0] - x) ** 2 + (s[1] - y) ** 2)


def place_label(
    index: int,
    boxes: Sequence[Rect],
    plate: tuple[int, int],
    placed: Sequence[Rect],
    slots: Sequence[tuple[int, int]],
    nearest: bool = False,
) -> tuple[Rect, float]:
    """The best of `slots` for the label of ``boxes[index]`` and the area it shares there with
    the labels ``placed`` already: the place covering no other label, then the least of other
    boxes (and half its own box: its own object), then the first of `slots`; with `nearest`,
    the first place covering no other label (so that it stays near its box)."""
    w, h = plate
    corners = np.asarray(slots, dtype=np.float64).reshape(-1, 2)
    rects = np.concatenate([corners, corners + [w - 1, h - 1]], axis=1)
    clash = _overlaps(rects, np.asarray(placed, dtype=np.float64).reshape(-1, 4)).sum(1)
    if nearest:
        covered = np.zeros(len(rects))
    else:
        weights = np.ones(len(boxes))
        weights[index] = 0.5
        covered = _overlaps(rects, np.asarray(boxes, dtype=np.float64)) @ weights
    best = int(np.lexsort((np.arange(len(rects)), covered, clash))[0])
    return tuple(float(v) for v in rects[best]), float(clash[best])


def _font_sizes(size: int) -> list[int]:
    """`size`, then smaller by about 15% a step, down to ``SMALLEST_FONT`` or 60% of `size`."""
    smallest = max(SMALLEST_FONT, round(0.6 * size))
    sizes = [size]
    while sizes[-1] > smallest:
        sizes.append(max(smallest, min(sizes[-1] - 1, round(sizes[-1] * 0.85))))
    return sizes


def layout_labels(
    boxes: Sequence[Rect],
    plate_size: Callable[[int, int], tuple[int, int]],
    size: int,
    picture_size: tuple[int, int],
    line: int,
) -> list[tuple[Rect, int]]:
    """(plate rectangle, font size) for the label of each box, the boxes taken in order
    (the most important first), each where it covers no earlier label: beside its box
    (``label_slots``) at `size`, else in a smaller font (``_font_sizes``), else the nearest
    free place (``nearby_slots``); where all are taken (more labels than room), the place
    that covers the least of the others. ``plate_size(i, font_size)`` is label i's (w, h)."""
    placed: list[Rect] = []
    out: list[tuple[Rect, int]] = []
    for index, box in enumerate(boxes):
        tries = [(font_size, False) for font_size in _font_sizes(size)]
        best: tuple[float, Rect, int] | None = None
        for font_size, anywhere in [*tries, (tries[-1][0], True)]:
            plate = plate_size(index, font_size)
            slots = (
                nearby_slots(box, plate, picture_size)
                if anywhere
                else label_slots(box, plate, picture_size, line)
            )
            rect, clash = place_label(index, boxes, plate, placed, slots, anywhere)
            if best is None or clash < best[0]:
                best = (clash, rect, font_size)
            if clash == 0:
                break
        assert best is not None
        placed.append(best[1])
        out.append((best[1], best[2]))
    return out


# ---------------------------------------------------------------- drawing


def _plate_metrics(draw: ImageDraw.ImageDraw, text: str, size: int) -> tuple[int, int, int, int]:
    """(plate width, plate height, text x offset, text y offset) for `text` at `size`."""
    face = font(size)
    left, _, right, _ = draw.textbbox((0, 0), text, font=face)
    _, top, _, bottom = draw.textbbox((0, 0), "Ag", font=face)  # same height for every text
    pad = max(1, size // 6)
    return right - left + 2 * pad, bottom - top + 2 * pad, pad - left, pad - top


def draw_label(
    draw: ImageDraw.ImageDraw,
    pixels: np.ndarray,
    plate: Rect,
    text: str,
    background: tuple[int, int, int],
    size: int,
) -> None:
    """`text` at `size` pixels on a `background` plate at `plate` (from ``layout_labels``),
    edged in black or white, whichever stands out from the picture there."""
    _, _, dx, dy = _plate_metrics(draw, text, size)
    x, y = plate[0], plate[1]
    edge = edge_width(drawing_sizes(pixels.shape[1], pixels.shape[0])[0])
    tone = _tone(_band_mean(pixels, plate, False, edge))
    draw.rectangle(list(plate), fill=background, outline=tone, width=edge)
    draw.text((x + dx, y + dy), text, fill=_text_color(background), font=font(size))


def draw_labelled_boxes(
    picture: Image.Image,
    boxes: Sequence[Rect],
    texts: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
) -> None:
    """Boxes (two-tone, see ``draw_box``) and their labels on `picture`, in place. The first
    box is the most important: its label is placed first, and its box drawn last (on top).
    Every label is drawn after every box, so no line crosses a label."""
    draw = ImageDraw.Draw(picture)
    pixels = np.asarray(picture.convert("RGB"))
    line, size = drawing_sizes(*picture.size)
    for box, color in zip(reversed(boxes), reversed(colors), strict=True):
        draw_box(draw, pixels, box, color, line)

    def plate_size(index: int, font_size: int) -> tuple[int, int]:
        return _plate_metrics(draw, texts[index], font_size)[:2]

    layout = layout_labels(boxes, plate_size, size, picture.size, line)
    for (plate, font_size), text, color in zip(layout, texts, colors, strict=True):
        draw_label(draw, pixels, plate, text, color, font_size)


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (3, H, W) or (1, H, W) uint8 tensor as an RGB PIL picture."""
    pixels = image.detach().cpu().expand(3, -1, -1).permute(1, 2, 0).contiguous()
    return Image.fromarray(pixels.numpy())


def draw_detections(
    image: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    scores: torch.Tensor | Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """A copy of a (3, H, W) uint8 picture with labelled boxes (absolute xyxy pixels) drawn on it.

    Boxes are clipped to the picture (the model's boxes are not), non-finite ones are skipped;
    the highest scores come first (their labels get the best places, their boxes are drawn on
    top). Without `scores` (ground truth) labels are class names only, in the given order.
    """
    height, width = image.shape[-2:]
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).detach().cpu().reshape(-1, 4)
    labels = [int(v) for v in torch.as_tensor(labels).reshape(-1).tolist()]
    values = None if scores is None else torch.as_tensor(scores).reshape(-1).tolist()
    keep = [i for i in range(len(boxes)) if torch.isfinite(boxes[i]).all()]
    if values is not None:
        keep.sort(key=lambda i: -values[i])
    if not keep:
        return image.clone()
    boxes = boxes[keep]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
    # Clipping can cross the corners of a box that lies outside; keep it well-formed.
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
    picture = to_pil(image)
    texts = [
        label_text(labels[i], None if values is None else float(values[i]), class_names)
        for i in keep
    ]
    colors = [class_color(labels[i]) for i in keep]
    draw_labelled_boxes(picture, [tuple(b) for b in boxes.tolist()], texts, colors)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)
