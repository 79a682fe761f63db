"""Reading pictures from disk and the official evaluation transform.

Decoding goes through Pillow because it covers what real folders contain: EXIF-rotated phone
photos, grayscale, palette, alpha, 16-bit and CMYK files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

from ddetr_cli.errors import DdetrError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# ImageNet statistics of RGB in [0, 1], as the official model used (docs/design.md#inputs).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand folders into their pictures (sorted, by extension, not recursive); keep files.

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
                    if p.suffix.lower() in IMAGE_EXTENSIONS
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
        raise DdetrError(
            f"no pictures found in {names} (extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return unique
