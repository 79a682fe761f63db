"""Reading pictures from disk (files and folders); the transforms are in ``data.transforms``.

Decoding goes through Pillow because it covers what real folders contain: EXIF-rotated phone
photos, grayscale, palette, alpha, 16-bit and CMYK files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ddetr_cli.errors import DdetrError

# The suffixes of pictures looked for in folders, by predict and by every data reader (lower
# case, matched case-insensitively). A GIF is read as its first frame.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def _to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any Pillow mode."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PNG/TIFF); Pillow's own convert() would clip at 255 instead of scaling.
        gray = np.asarray(image).astype(np.float32)
        gray = np.clip(np.rint(gray / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids Pillow's palette-transparency warning
    if image.mode != "RGB":
        # Alpha is dropped (not composited), exactly like the official loader's .convert("RGB").
        image = image.convert("RGB")
    return np.array(image)  # a writable copy, as torch.from_numpy wants


def load_image(path: str | Path) -> torch.Tensor:
    """Decode a picture to a (3, H, W) uint8 RGB tensor, upright per its EXIF orientation.

    Raises ``DdetrError`` naming the file for anything that is not a readable picture.
    """
    path = Path(path)
    if not path.exists():
        raise DdetrError(f"{path}: no such file")
    if path.is_dir():
        raise DdetrError(f"{path}: is a directory, not a picture")
    try:
        if path.stat().st_size == 0:
            raise DdetrError(f"{path}: empty file")
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here
            array = _to_rgb(ImageOps.exif_transpose(image))
    except DdetrError:
        raise
    except UnidentifiedImageError:
        raise DdetrError(f"{path}: not a picture Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise DdetrError(f"{path}: too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError/ValueError.
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DdetrError(f"{path}: cannot decode picture ({reason})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def is_picture(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def pictures_in(folder: Path) -> list[Path]:
    """Every picture under ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_picture(p))


def picture_size(path: Path) -> tuple[int, int]:
    """(width, height) as ``load_image`` will see it (EXIF rotation applied), from the header
    only; ``DdetrError`` for a missing or unreadable file."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DdetrError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DdetrError(f"{path}: cannot read the picture ({exc})") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def list_images(
    inputs: Iterable[str | Path],
    suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
    what: str = "pictures",
) -> list[Path]:
    """Expand folders into their files with ``suffixes`` (pictures unless told; sorted, not
    recursive); keep files. ``what`` names them in the error when there are none.

    Files named explicitly are kept whatever their extension (a bad one fails later, on its own).
    Duplicates are dropped. A missing path, or nothing to process at all, is a ``DdetrError``.
    """
    inputs = [Path(item) for item in inputs]
    found: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix.lower() in suffixes
                    and not p.name.startswith(".")  # e.g. macOS "._x.jpg" resource forks
                    and p.is_file()
                )
            )
        elif path.exists():
            found.append(path)
        else:
            raise DdetrError(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(found))
    if not unique:
        names = ", ".join(str(p) for p in inputs) or "(no inputs)"
        raise DdetrError(f"no {what} found in {names} (extensions: {', '.join(suffixes)})")
    return unique
