"""The predictions view: pictures with their detections, as ``ddetr predict`` draws them, and one
contact sheet of them all."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ddetr_cli.errors import DdetrError


def contact_sheet(pictures: list[Path], out: Path, columns: int = 4, cell: int = 320) -> Path:
    """Thumbnails of `pictures` in a grid of square cells, for a look at many predictions at once.

    Each picture is scaled so that its longer side fills its cell (aspect kept). Cells are at most
    `cell` pixels, and no larger than the largest picture, so small pictures are not blown up."""
    if not pictures:
        raise DdetrError("no pictures to put on a sheet")
    gap = 3  # white border around each thumbnail
    thumbs = []
    for path in pictures:
        with Image.open(path) as picture:
            thumbs.append(picture.convert("RGB"))
    inner = min(cell - 2 * gap, max(max(t.size) for t in thumbs))
    cell = inner + 2 * gap
    rows = -(-len(pictures) // columns)
    sheet = Image.new("RGB", (columns * cell, rows * cell), (255, 255, 255))
    for i, thumb in enumerate(thumbs):
        scale = inner / max(thumb.size)
        size = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
        if size != thumb.size:
            thumb = thumb.resize(size, Image.Resampling.LANCZOS)
        x = (i % columns) * cell + gap + (inner - thumb.width) // 2
        y = (i // columns) * cell + gap + (inner - thumb.height) // 2
        sheet.paste(thumb, (x, y))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
