"""Shared test setup: the gpu marker, and small pictures of every kind a user folder holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Solid colours survive JPEG well enough to check orientation by colour.
RED = (220, 30, 30)
BLUE = (30, 30, 220)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        # The marker itself: keywords also hold folder names, and a checkout in a folder named
        # "gpu" would skip every test.
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def _half_and_half(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = RED
    array[:, width // 2 :] = BLUE
    return Image.fromarray(array)


@pytest.fixture
def image_files(tmp_path: Path) -> dict[str, Path]:
    """name -> path of small test pictures (good and bad) in a fresh folder."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    files: dict[str, Path] = {}

    def path(name: str) -> Path:
        files[name.split(".")[0]] = folder / name
        return folder / name

    rgb = _half_and_half(40, 30)
    rgb.save(path("rgb.jpg"), quality=95)

    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))  # 20 x 25, a ramp
    Image.fromarray(gray, "L").save(path("gray.png"))

    rgba = np.zeros((16, 24, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[..., 3] = 0  # fully transparent: the colour must still come through
    Image.fromarray(rgba, "RGBA").save(path("rgba.png"))

    # 16-bit grayscale: 0, 128*257 and 65535 -> 0, 128, 255 after scaling.
    gray16 = np.zeros((10, 30), np.uint16)
    gray16[:, 10:20] = 128 * 257
    gray16[:, 20:] = 65535
    Image.fromarray(gray16).save(path("gray16.png"))

    # Stored 40 wide x 20 high, left red / right blue, with EXIF orientation 6 ("rotate 90 CW to
    # display"): upright it is 20 wide x 40 high with red on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    _half_and_half(40, 20).save(path("exif_rotated.jpg"), exif=exif, quality=95)

    path("empty.jpg").write_bytes(b"")
    whole = folder / "whole.tmp"
    _half_and_half(64, 48).save(whole, format="JPEG")
    data = whole.read_bytes()
    whole.unlink()
    path("truncated.jpg").write_bytes(data[: len(data) // 2])
    path("text.jpg").write_text("this is not a picture\n")
    return files
