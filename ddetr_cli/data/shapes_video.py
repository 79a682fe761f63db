"""A clip of moving shapes for the video demo and tests: no download, the same clip from the
same seed.

Circles, rectangles and triangles of the demo (``data.shapes``) glide across a plain background
and bounce off its edges. Frames are twice the demo pictures' size (256 x 256) with shapes
twice as large, so the demo model, which resizes what it sees to 128 pixels, meets shapes of
the sizes it was trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

# The demo pictures' own drawing, colours and spacing, so the clip's shapes are theirs.
from ddetr_cli.data.shapes import MAX_SIDE, MIN_SIDE, draw_shape, overlap_ok, shape_colour
from ddetr_cli.errors import UsageError
from ddetr_cli.video.writer import VideoWriter

CLIP_SIZE = 256  # pixels, square
SCALE = 2  # shapes (and frames) twice the demo pictures' size
MIN_OBJECTS, MAX_OBJECTS = 4, 5  # every class at least once
MAX_SPEED = 3.0  # pixels per frame at 25 frames per second, on each axis
NOISE = 6.0  # the demo pictures' light noise, so the clip looks like them to the model


@dataclass
class _Mover:
    kind: int  # 0 circle, 1 rectangle, 2 triangle
    size: np.ndarray  # (w, h)
    position: np.ndarray  # top-left (x, y), float
    velocity: np.ndarray  # pixels per frame
    colour: tuple[int, int, int]
    seed: tuple[int, int]  # of the generator that shapes it (triangle apex), the same each frame

    def box(self) -> np.ndarray:
        x0, y0 = np.rint(self.position)
        return np.array([x0, y0, x0 + self.size[0], y0 + self.size[1]], dtype=np.float32)

    def move(self) -> None:
        self.position += self.velocity
        for axis in (0, 1):
            far = CLIP_SIZE - self.size[axis]
            if not 0 <= self.position[axis] <= far:  # bounce off the edge
                self.velocity[axis] = -self.velocity[axis]
                self.position[axis] = np.clip(self.position[axis], 0, far)


def _movers(rng: np.random.Generator, seed: int, background: np.ndarray, fps: float) -> list:
    movers = []
    first_kind = int(rng.integers(0, 3))
    for index in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
        kind = (first_kind + index) % 3
        w = int(rng.integers(MIN_SIDE, MAX_SIDE + 1)) * SCALE
        h = w if kind == 0 else int(rng.integers(MIN_SIDE, MAX_SIDE + 1)) * SCALE
        for _ in range(50):  # start apart, as the demo pictures' shapes are
            position = rng.uniform(0, [CLIP_SIZE - w, CLIP_SIZE - h])
            box = np.array([*position, position[0] + w, position[1] + h])
            if overlap_ok(box, [m.box() for m in movers]):
                break
        velocity = rng.uniform(0.3, 1.0, size=2) * rng.choice([-1, 1], size=2)
        velocity *= MAX_SPEED * 25 / fps  # the same speed on screen at any frame rate
        colour = shape_colour(rng, background)
        movers.append(_Mover(kind, np.array([w, h]), position, velocity, colour, (seed, index)))
    return movers


def shapes_clip(seconds: float, fps: int = 25, seed: int = 0) -> Iterator[np.ndarray]:
    """The frames, (256, 256, 3) uint8 RGB each, of a clip ``seconds`` long."""
    rng = np.random.default_rng([seed, 1])
    background = rng.integers(0, 256, size=3).astype(np.float64)
    movers = _movers(rng, seed, background, fps)
    fill = tuple(int(c) for c in background)
    for index in range(round(seconds * fps)):
        image = Image.new("RGB", (CLIP_SIZE, CLIP_SIZE), fill)
        draw = ImageDraw.Draw(image)
        for mover in movers:
            shaper = np.random.default_rng(mover.seed)
            draw_shape(draw, mover.kind, mover.box(), mover.colour, shaper)
            mover.move()
        pixels = np.asarray(image, dtype=np.float32)
        pixels += np.random.default_rng([seed, 2, index]).normal(0.0, NOISE, size=pixels.shape)
        yield np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def write_shapes_video(path: str | Path, seconds: float, fps: int = 25, seed: int = 0) -> int:
    """Write the clip to ``path`` (MP4, H.264 where available), atomically; its frame count."""
    if fps < 1:
        raise UsageError(f"--fps must be at least 1, got {fps}")
    if round(seconds * fps) < 1:
        raise UsageError(f"--seconds must give at least one frame, got {seconds:g}")
    writer = VideoWriter(path, CLIP_SIZE, CLIP_SIZE, Fraction(fps))
    try:
        for index, frame in enumerate(shapes_clip(seconds, fps, seed)):
            writer.write(torch.from_numpy(frame).permute(2, 0, 1), index / fps)
    except BaseException:
        writer.discard()
        raise
    writer.close()
    return writer.frames
