"""Built-in synthetic data: filled circles, rectangles and triangles on a plain background.

A second task from the same generator (``shapes6``) adds ellipses, five-pointed stars and
crosses: six classes, the first three as in ``shapes3``, for transfer experiments.

The task is fixed so results compare across runs and machines: 128x128 pictures, 1-5 objects,
sides 12-60 px, any two boxes overlapping by at most 30% of the smaller one. Picture ``i`` of
a split depends only on (seed, i), so any worker can make any picture, and the val split (200
pictures from its own seed) is the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("circle", "rectangle", "triangle")
TASKS = {
    "shapes3": CLASS_NAMES,
    "shapes6": (*CLASS_NAMES, "ellipse", "star", "cross"),
}
IMAGE_SIZE = 128
MIN_OBJECTS, MAX_OBJECTS = 1, 5
MIN_SIDE, MAX_SIDE = 12, 60
MAX_OVERLAP = 0.3  # of the smaller box's area
VAL_SEED = 20_240_601  # the val split's own seed: never used for training pictures
VAL_IMAGES = 200
_MIN_CONTRAST = 90.0  # colour distance from the background, so every shape is visible


@dataclass(frozen=True)
class ShapesPicture:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (N, 4) float32 absolute xyxy
    labels: np.ndarray  # (N,) int64, index into CLASS_NAMES


def _overlap_ok(box: np.ndarray, others: list[np.ndarray]) -> bool:
    for other in others:
        w = min(box[2], other[2]) - max(box[0], other[0])
        h = min(box[3], other[3]) - max(box[1], other[1])
        if w <= 0 or h <= 0:
            continue
        smaller = min(
            (box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1])
        )
        if w * h > MAX_OVERLAP * smaller:
            return False
    return True


def _colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    for _ in range(100):
        colour = rng.integers(0, 256, size=3)
        if np.linalg.norm(colour - background) >= _MIN_CONTRAST:
            break
    return tuple(int(c) for c in colour)


def _star(x0: int, y0: int, x1: int, y1: int, rng) -> list[tuple[float, float]]:
    """A five-pointed star stretched so its points touch all four sides of the box."""
    turn = rng.uniform(0, 2 * np.pi)
    angles = turn + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    xs, ys = radii * np.cos(angles), radii * np.sin(angles)
    xs = x0 + (xs - xs.min()) / (xs.max() - xs.min()) * (x1 - 1 - x0)
    ys = y0 + (ys - ys.min()) / (ys.max() - ys.min()) * (y1 - 1 - y0)
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def _draw(draw: ImageDraw.ImageDraw, kind: int, box: np.ndarray, fill, rng) -> None:
    x0, y0, x1, y1 = (int(v) for v in box)
    # PIL's coordinates are inclusive: the shape covers pixels x0..x1-1, y0..y1-1.
    if kind in (0, 3):  # circle (w == h) or ellipse
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif kind == 1:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif kind == 4:
        draw.polygon(_star(x0, y0, x1, y1, rng), fill=fill)
    elif kind == 5:  # a plus sign: arms a third of the box thick, reaching every side
        tx, ty = max(2, (x1 - x0) // 3), max(2, (y1 - y0) // 3)
        cx, cy = (x0 + x1 - tx) // 2, (y0 + y1 - ty) // 2
        draw.rectangle([x0, cy, x1 - 1, cy + ty - 1], fill=fill)
        draw.rectangle([cx, y0, cx + tx - 1, y1 - 1], fill=fill)
    else:
        apex = int(rng.integers(x0, x1))
        if rng.random() < 0.5:  # apex up or down; the box stays tight either way
            points = [(x0, y1 - 1), (x1 - 1, y1 - 1), (apex, y0)]
        else:
            points = [(x0, y0), (x1 - 1, y0), (apex, y1 - 1)]
        draw.polygon(points, fill=fill)


def make_picture(seed: int, index: int, task: str = "shapes3") -> ShapesPicture:
    """Picture ``index`` of the split with ``seed``; the same arguments give the same picture.
    ``task`` picks the classes (``TASKS``); shapes3 pictures never change."""
    kinds = len(TASKS[task])
    rng = np.random.default_rng([seed, index])
    background = rng.integers(0, 256, size=3).astype(np.float64)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    wanted = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    for _ in range(wanted * 50):  # rejection sampling; gives up on crowded pictures
        if len(boxes) == wanted:
            break
        kind = int(rng.integers(0, kinds))
        w = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        h = w if kind == 0 else int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        x0 = int(rng.integers(0, IMAGE_SIZE - w + 1))
        y0 = int(rng.integers(0, IMAGE_SIZE - h + 1))
        box = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float32)
        if not _overlap_ok(box, boxes):
            continue
        _draw(draw, kind, box, _colour(rng, background), rng)
        boxes.append(box)
        labels.append(kind)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0.0, 6.0, size=pixels.shape)  # light noise
    return ShapesPicture(
        image=np.clip(np.rint(pixels), 0, 255).astype(np.uint8),
        boxes=np.stack(boxes).astype(np.float32),
        labels=np.asarray(labels, dtype=np.int64),
    )


def coco_dict(
    seed: int, count: int, file_names: list[str] | None = None, task: str = "shapes3"
) -> dict:
    """COCO-format annotations of the first ``count`` pictures of a split (ids start at 1;
    category ids are the class indices 0, 1, 2, ...)."""
    images, annotations = [], []
    for i in range(count):
        picture = make_picture(seed, i, task)
        name = file_names[i] if file_names else f"{i:06d}.png"
        images.append({"id": i + 1, "file_name": name, "height": IMAGE_SIZE, "width": IMAGE_SIZE})
        for box, label in zip(picture.boxes, picture.labels, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": name} for i, name in enumerate(TASKS[task])]
    return {"images": images, "annotations": annotations, "categories": categories}
