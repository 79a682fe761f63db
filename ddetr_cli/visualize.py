"""Pictures that explain the model: where deformable attention looks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from ddetr_cli.errors import DdetrError, UsageError

# One colour per feature level (stride 8, 16, 32, 64, ...), distinct on most pictures.
LEVEL_COLOURS = [(255, 64, 64), (255, 200, 0), (0, 200, 255), (200, 80, 255), (80, 255, 120)]


@dataclass
class AttentionPictures:
    paths: list[Path] = field(default_factory=list)
    detections: list[dict[str, Any]] = field(default_factory=list)
    decoder_layer: int = 0  # the layers drawn, numbered from 1
    encoder_layer: int = 0
    decoder_layers: int = 0  # how many the model has


def _layer(layers: nn.ModuleList, number: int, what: str) -> tuple[nn.Module, int]:
    """Layer `number` (from 1; -1 the last, -2 the one before) and its number from 1."""
    count = len(layers)
    numbers = f"1-{count}, or -1 for the last" if count > 1 else "1, or -1"
    if number == 0:
        raise UsageError(f"--{what}-layer 0: layers are numbered from 1 ({numbers})")
    if not -count <= number <= count:
        plural = "s" if count > 1 else ""
        raise UsageError(
            f"--{what}-layer {number}: the model has {count} {what} layer{plural} ({numbers})"
        )
    index = number - 1 if number > 0 else count + number
    return layers[index], index + 1


def _draw_points(
    picture: Image.Image, locations: Tensor, weights: Tensor, reference: Tensor
) -> Image.Image:
    """Sampling points of one query: locations (M, L, P, 2) and weights (M, L, P) in [0, 1]
    picture coordinates; each point's size and opacity follow its weight, colour = level."""
    width, height = picture.size
    # Dots and cross keep their look on large pictures: sizes grow with the shorter side.
    grow = max(1.0, min(width, height) / 400)
    overlay = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    top = float(weights.max()) or 1.0
    order = weights.flatten().argsort()  # heaviest drawn last, on top
    levels = weights.shape[1]
    flat_loc = locations.reshape(-1, 2)
    for i in order.tolist():
        level = (i // weights.shape[2]) % levels
        share = float(weights.flatten()[i]) / top
        x, y = float(flat_loc[i, 0]) * width, float(flat_loc[i, 1]) * height
        radius = (1.5 + 6.0 * share) * grow
        colour = (*LEVEL_COLOURS[level % len(LEVEL_COLOURS)], int(90 + 165 * share))
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    rx, ry = float(reference[0]) * width, float(reference[1]) * height
    arm, line = 6 * grow, round(2 * grow)
    for dx, dy in ((-arm, 0), (0, -arm)):  # a white cross on the reference point
        draw.line([rx + dx, ry + dy, rx - dx, ry - dy], fill=(255, 255, 255, 255), width=line)
    return Image.alpha_composite(picture.convert("RGBA"), overlay)


def _legend(picture: Image.Image, levels: int, title: str) -> Image.Image:
    """The picture below a strip with `title` and the colour of every level; the strip wraps
    its entries onto more rows when the picture is narrow, so nothing is cut or covered."""
    from ddetr_cli.draw import drawing_sizes, font

    size = drawing_sizes(*picture.size)[1]
    face = font(size)
    pad, dot = max(2, size // 3), max(6, round(size * 0.8))
    entries = [(None, title)] + [
        (LEVEL_COLOURS[level % len(LEVEL_COLOURS)], f"level {level}") for level in range(levels)
    ]
    measure = ImageDraw.Draw(picture)
    _, top, _, bottom = measure.textbbox((0, 0), "Ag", font=face)
    row_height = bottom - top + 2 * pad
    placed, x, row = [], pad, 0
    for colour, text in entries:
        width = measure.textlength(text, font=face) + (dot + pad if colour else 0)
        if x > pad and x + width > picture.width - pad:
            x, row = pad, row + 1
        placed.append((x, row, colour, text))
        x += width + 2 * pad
    strip = row_height * (row + 1)
    framed = Image.new(picture.mode, (picture.width, picture.height + strip), (0, 0, 0, 255))
    framed.paste(picture, (0, strip))
    draw = ImageDraw.Draw(framed)
    for x, row, colour, text in placed:
        y = row * row_height + pad
        if colour is not None:
            middle = y + (bottom - top) / 2
            draw.ellipse([x, middle - dot / 2, x + dot, middle + dot / 2], fill=colour)
            x += dot + pad
        draw.text((x, y - top), text, fill=(255, 255, 255, 255), font=face)
    return framed


@torch.inference_mode()
def attention_pictures(
    model: nn.Module,
    image: Tensor,
    name: str,
    out_dir: Path,
    class_names: list[str] | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    decoder_layer: int = -1,
    top: int = 5,
    pixel: tuple[int, int] | None = None,
    encoder_layer: int = -1,
) -> AttentionPictures:
    """For the `top` detections, the sampling points of one decoder layer's cross-attention on
    every level, with the reference point and the predicted box; with `pixel` (x, y), also the
    points an encoder layer samples for the stride-8 position under that pixel. Layers are
    numbered from 1 (-1: the last), as in the legends."""
    from ddetr_cli.data.transforms import eval_transform
    from ddetr_cli.draw import contrasting_color, draw_labelled_boxes, drawing_sizes, label_text

    decoder, decoder_number = _layer(model.transformer.decoder.layers, decoder_layer, "decoder")
    encoder, encoder_number = _layer(model.transformer.encoder.layers, encoder_layer, "encoder")
    decoder_attn, encoder_attn = decoder.cross_attn, encoder.self_attn
    height, width = image.shape[-2:]
    if pixel is not None and not (0 <= pixel[0] < width and 0 <= pixel[1] < height):
        raise DdetrError(f"--pixel {pixel[0]} {pixel[1]} is outside the {width}x{height} picture")
    decoder_attn.capture = encoder_attn.capture = True
    try:
        device = next(model.parameters()).device
        outputs = model([eval_transform(image, min_size, max_size).to(device)])
        decoded, encoded = decoder_attn.captured, encoder_attn.captured
    finally:
        decoder_attn.capture = encoder_attn.capture = False
        decoder_attn.captured = encoder_attn.captured = None
    # The picture is alone in its batch, so normalised coordinates cover it exactly.
    base = _to_pil(image.cpu())
    pixels = np.asarray(base.convert("RGB"))
    result = AttentionPictures(decoder_layer=decoder_number, encoder_layer=encoder_number,
                               decoder_layers=len(model.transformer.decoder.layers))  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    logits = outputs["pred_logits"][0].float()
    num_classes = logits.shape[1]
    scores, index = logits.sigmoid().flatten().topk(min(top, logits.numel()))
    for rank, (score, flat) in enumerate(zip(scores.tolist(), index.tolist(), strict=True)):
        query, label = divmod(flat, num_classes)
        reference = decoded["reference_points"][0, query, 0].float().cpu()
        picture = _draw_points(
            base,
            decoded["locations"][0, query].float().cpu(),
            decoded["weights"][0, query].float().cpu(),
            reference,
        )
        cx, cy, w, h = (outputs["pred_boxes"][0, query].float().cpu() * torch.tensor(
            [width, height, width, height])).tolist()  # fmt: skip
        # The box as predict draws it, in a colour that stands out from the picture under it.
        box = (max(cx - w / 2, 0), max(cy - h / 2, 0), min(cx + w / 2, width - 1),
               min(cy + h / 2, height - 1))  # fmt: skip
        box = (box[0], box[1], max(box[0], box[2]), max(box[1], box[3]))
        colour = contrasting_color(pixels, box, drawing_sizes(width, height)[0])
        draw_labelled_boxes(picture, [box], [label_text(label, score, class_names)], [colour])
        picture = _legend(picture, decoded["locations"].shape[3], f"decoder layer {decoder_number}")
        path = out_dir / f"{name}_attention_{rank + 1}_query{query}.png"
        picture.convert("RGB").save(path)
        result.paths.append(path)
        result.detections.append({"query": query, "label": label, "score": score,
                                  "name": label_text(label, None, class_names),
                                  "picture": str(path)})  # fmt: skip
    if pixel is not None:
        h0, w0 = (int(v) for v in encoded["spatial_shapes"][0])
        query = int(pixel[1] * h0 / height) * w0 + int(pixel[0] * w0 / width)
        picture = _draw_points(
            base,
            encoded["locations"][0, query].float().cpu(),
            encoded["weights"][0, query].float().cpu(),
            encoded["reference_points"][0, query, 0].float().cpu(),
        )
        levels = encoded["locations"].shape[3]
        picture = _legend(picture, levels, f"encoder layer {encoder_number}")
        path = out_dir / f"{name}_encoder_x{pixel[0]}_y{pixel[1]}.png"
        picture.convert("RGB").save(path)
        result.paths.append(path)
    return result


# Curves drawn when the run logged them: (key, record type, title).
CURVES = (
    ("loss", "step", "total loss (weighted)"),
    ("loss_ce", "step", "loss_ce (focal)"),
    ("loss_bbox", "step", "loss_bbox (L1)"),
    ("loss_giou", "step", "loss_giou"),
    ("lr", "step", "learning rate"),
    ("AP", "epoch", "val AP"),
    ("AP50", "epoch", "val AP50"),
)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, with one-line errors for unusable files."""
    import json

    if not path.is_file():
        raise DdetrError(f"metrics file not found: {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DdetrError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(record, dict):
            raise DdetrError(f"{path}:{number}: expected a JSON object per line")
        records.append(record)
    return records


def curves_picture(metrics: Path, out: Path, columns: int = 3) -> tuple[Path, list[str]]:
    """Loss terms, learning rate and val AP over steps from a run's metrics.jsonl, as one PNG
    of small matplotlib charts; returns the picture and the curves it holds.

    ``out`` is the picture, or a folder (an existing one, or a path without a picture suffix)
    to hold ``curves.png``.
    """
    from ddetr_cli.plots import curves_figure

    records = read_metrics(metrics)
    panels, names = [], []
    for key, kind, title in CURVES:
        rows = [r for r in records if r.get("type") == kind and isinstance(r.get(key), int | float)]
        if rows and all(isinstance(r.get("step"), int | float) for r in rows):
            panels.append((title, [r["step"] for r in rows], [r[key] for r in rows]))
            names.append(key)
    if not panels:
        raise DdetrError(f"{metrics}: no step or epoch records with losses, lr or AP to draw")
    if out.is_dir() or out.suffix.lower() not in {".png", ".jpg", ".jpeg", ".pdf", ".svg"}:
        out = out / "curves.png"
    return curves_figure(panels, out, columns), names


def _side_by_side(pictures: list[Image.Image], gap: int = 8) -> Image.Image:
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    sheet = Image.new("RGB", (width, max(p.height for p in pictures)), (255, 255, 255))
    x = 0
    for picture in pictures:
        sheet.paste(picture, (x, 0))
        x += picture.width + gap
    return sheet


def _to_pil(image: Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


def dataset_pictures(
    recipe: dict[str, Any], out_dir: Path, count: int = 8, epoch: int = 0
) -> list[Path]:
    """Ground-truth boxes on the first `count` training pictures as stored (left) and as one
    augmented training sample of `epoch` (right), to check data and augmentation."""
    from torchvision.ops import box_convert

    from ddetr_cli.data import build_datasets
    from ddetr_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from ddetr_cli.draw import draw_detections

    splits = build_datasets(recipe, train=True)
    dataset, names = splits.train, splits.class_names or None
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(min(count, len(dataset))):
        raw, boxes, labels = dataset.load(index)
        # Ground truth has no score: class names only.
        left = draw_detections(raw, boxes, labels, class_names=names)
        pixels, target = dataset[(epoch, index)]
        augmented = ((pixels * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        h, w = augmented.shape[-2:]
        xyxy = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
        right = draw_detections(augmented, xyxy, target["labels"], class_names=names)
        path = out_dir / f"{dataset.image_id(index)}_dataset.png"
        _side_by_side([_to_pil(left), _to_pil(right)]).save(path)
        paths.append(path)
    return paths


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
