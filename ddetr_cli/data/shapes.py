"""Built-in synthetic data: filled circles, rectangles and triangles on a plain background.

A second task from the same generator (``shapes6``) adds ellipses, five-pointed stars and
crosses: six classes, the first three as in ``shapes3``, for transfer experiments.

A third (``small``, files only: ``ddetr data shapes --task small``) is small objects on large
pictures: 1024-1536 pixels a side, the three shapes of ``shapes3`` at 8-32 pixels, about one
per 15,000 pixels of picture (70-160 of them), on a colour gradient cluttered with thin lines,
dots and hollow outlines that are not objects. What sliced inference (``--slice``) is for.

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
SMALL_TASK = "small"
TASKS = {
    "shapes3": CLASS_NAMES,
    "shapes6": (*CLASS_NAMES, "ellipse", "star", "cross"),
    SMALL_TASK: CLASS_NAMES,
}
IMAGE_SIZE = 128
MIN_OBJECTS, MAX_OBJECTS = 1, 5
MIN_SIDE, MAX_SIDE = 12, 60
MAX_OVERLAP = 0.3  # of the smaller box's area
VAL_SEED = 20_240_601  # the val split's own seed: never used for training pictures
VAL_IMAGES = 200
_MIN_CONTRAST = 90.0  # colour distance from the background, so every shape is visible
# The small task: picture sides, shape sides, picture pixels per shape, clutter per pixel.
SMALL_PICTURE_SIDES = (1024, 1536)
SMALL_MIN_SIDE, SMALL_MAX_SIDE = 8, 32
SMALL_PIXELS_PER_SHAPE = 15_000
_CLUTTER_PIXELS = {"line": 12_000, "dot": 6_000, "outline": 40_000}


@dataclass(frozen=True)
class ShapesPicture:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (N, 4) float32 absolute xyxy
    labels: np.ndarray  # (N,) int64, index into CLASS_NAMES


def overlap_ok(box: np.ndarray, others: list[np.ndarray]) -> bool:
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


def shape_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A random colour at least _MIN_CONTRAST from ``background`` (best of 100 tries)."""
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


def draw_shape(draw: ImageDraw.ImageDraw, kind: int, box: np.ndarray, fill, rng) -> None:
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
        if not overlap_ok(box, boxes):
            continue
        draw_shape(draw, kind, box, shape_colour(rng, background), rng)
        boxes.append(box)
        labels.append(kind)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0.0, 6.0, size=pixels.shape)  # light noise
    return ShapesPicture(
        image=np.clip(np.rint(pixels), 0, 255).astype(np.uint8),
        boxes=np.stack(boxes).astype(np.float32),
        labels=np.asarray(labels, dtype=np.int64),
    )


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32: a linear blend of two random colours along a random direction."""
    start, end = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    along_x = np.arange(width, dtype=np.float32) * np.float32(np.cos(angle))
    along_y = np.arange(height, dtype=np.float32) * np.float32(np.sin(angle))
    t = along_y[:, None] + along_x[None, :]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return start + t[..., None] * (end - start)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, height: int, width: int) -> None:
    """Thin lines, dots and hollow outlines: things that are not objects."""
    area = height * width
    for _ in range(area // _CLUTTER_PIXELS["line"]):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(16, 160)
        end = (x + length * np.cos(angle), y + length * np.sin(angle))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.line([(x, y), end], fill=colour, width=int(rng.integers(1, 3)))
    for _ in range(area // _CLUTTER_PIXELS["dot"]):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1, 3)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    for _ in range(area // _CLUTTER_PIXELS["outline"]):
        side = int(rng.integers(SMALL_MIN_SIDE, SMALL_MAX_SIDE + 1))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + side - 1, y + side - 1], outline=colour, width=1)


def make_small_picture(seed: int, index: int) -> ShapesPicture:
    """Picture ``index`` of the small task's split with ``seed`` (see the module docstring)."""
    rng = np.random.default_rng([seed, index, 3])  # its own stream: not a shapes3 picture
    height, width = (int(v) for v in rng.integers(*SMALL_PICTURE_SIDES, size=2, endpoint=True))
    background = _gradient(rng, height, width)
    image = Image.fromarray(np.rint(background).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    _clutter(draw, rng, height, width)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    wanted = int(rng.poisson(height * width / SMALL_PIXELS_PER_SHAPE))
    for _ in range(wanted * 20):  # rejection sampling, as make_picture
        if len(boxes) == wanted:
            break
        kind = int(rng.integers(0, len(CLASS_NAMES)))
        w = int(rng.integers(SMALL_MIN_SIDE, SMALL_MAX_SIDE + 1))
        h = w if kind == 0 else int(rng.integers(SMALL_MIN_SIDE, SMALL_MAX_SIDE + 1))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float32)
        if not overlap_ok(box, boxes):
            continue
        local = background[y0 + h // 2, x0 + w // 2]  # the gradient under the shape
        draw_shape(draw, kind, box, shape_colour(rng, local), rng)
        boxes.append(box)
        labels.append(kind)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += 6.0 * rng.standard_normal(size=pixels.shape, dtype=np.float32)
    return ShapesPicture(
        image=np.clip(np.rint(pixels), 0, 255).astype(np.uint8),
        boxes=np.stack(boxes).astype(np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
    )


def task_picture(seed: int, index: int, task: str = "shapes3") -> ShapesPicture:
    """Picture ``index`` of the split with ``seed`` of any task of ``TASKS``."""
    if task == SMALL_TASK:
        return make_small_picture(seed, index)
    return make_picture(seed, index, task)


def picture_suffix(task: str) -> str:
    """The file suffix of a task's pictures: the large noisy small-task pictures as JPEG."""
    return ".jpg" if task == SMALL_TASK else ".png"


def coco_entries(
    picture: ShapesPicture, image_id: int, file_name: str, first_annotation_id: int
) -> tuple[dict, list[dict]]:
    """The COCO image entry and annotations of one picture (category id = class index)."""
    height, width = picture.image.shape[:2]
    image = {"id": image_id, "file_name": file_name, "height": height, "width": width}
    annotations = []
    for box, label in zip(picture.boxes, picture.labels, strict=True):
        x0, y0, x1, y1 = (float(v) for v in box)
        annotations.append(
            {
                "id": first_annotation_id + len(annotations),
                "image_id": image_id,
                "category_id": int(label),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
        )
    return image, annotations


def coco_categories(task: str) -> list[dict]:
    return [{"id": i, "name": name} for i, name in enumerate(TASKS[task])]


def coco_dict(
    seed: int, count: int, file_names: list[str] | None = None, task: str = "shapes3"
) -> dict:
    """COCO-format annotations of the first ``count`` pictures of a split (ids start at 1;
    category ids are the class indices 0, 1, 2, ...)."""
    images, annotations = [], []
    for i in range(count):
        name = file_names[i] if file_names else f"{i:06d}{picture_suffix(task)}"
        image, boxes = coco_entries(task_picture(seed, i, task), i + 1, name, len(annotations) + 1)
        images.append(image)
        annotations += boxes
    return {"images": images, "annotations": annotations, "categories": coco_categories(task)}
