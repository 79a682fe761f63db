"""Pictures that explain the model: where deformable attention looks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from ddetr_cli.errors import DdetrError

# One colour per feature level (stride 8, 16, 32, 64, ...), distinct on most pictures.
LEVEL_COLOURS = [(255, 64, 64), (255, 200, 0), (0, 200, 255), (200, 80, 255), (80, 255, 120)]


@dataclass
class AttentionPictures:
    paths: list[Path] = field(default_factory=list)
    detections: list[dict[str, Any]] = field(default_factory=list)


def _layer(layers: nn.ModuleList, index: int, what: str) -> nn.Module:
    if not -len(layers) <= index < len(layers):
        raise DdetrError(f"--{what}-layer {index}: the model has {len(layers)} {what} layers")
    return layers[index]


def _draw_points(
    picture: Image.Image, locations: Tensor, weights: Tensor, reference: Tensor
) -> Image.Image:
    """Sampling points of one query: locations (M, L, P, 2) and weights (M, L, P) in [0, 1]
    picture coordinates; each point's size and opacity follow its weight, colour = level."""
    width, height = picture.size
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
        radius = 1.5 + 6.0 * share
        colour = (*LEVEL_COLOURS[level % len(LEVEL_COLOURS)], int(90 + 165 * share))
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    rx, ry = float(reference[0]) * width, float(reference[1]) * height
    for dx, dy in ((-6, 0), (0, -6)):  # a white cross on the reference point
        draw.line([rx + dx, ry + dy, rx - dx, ry - dy], fill=(255, 255, 255, 255), width=2)
    return Image.alpha_composite(picture.convert("RGBA"), overlay)


def _legend(picture: Image.Image, levels: int, title: str) -> Image.Image:
    draw = ImageDraw.Draw(picture)
    draw.rectangle([0, 0, 12 + 70 * levels + 8 * len(title), 16], fill=(0, 0, 0, 160))
    draw.text((4, 3), title, fill=(255, 255, 255, 255))
    x = 8 + 7 * len(title)
    for level in range(levels):
        draw.ellipse([x, 4, x + 8, 12], fill=LEVEL_COLOURS[level % len(LEVEL_COLOURS)])
        draw.text((x + 11, 3), f"level {level}", fill=(255, 255, 255, 255))
        x += 70
    return picture


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
    points an encoder layer samples for the stride-8 position under that pixel."""
    from ddetr_cli.images import eval_transform

    decoder_attn = _layer(model.transformer.decoder.layers, decoder_layer, "decoder").cross_attn
    encoder_attn = _layer(model.transformer.encoder.layers, encoder_layer, "encoder").self_attn
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
    result = AttentionPictures()
    out_dir.mkdir(parents=True, exist_ok=True)
    logits = outputs["pred_logits"][0].float()
    num_classes = logits.shape[1]
    scores, index = logits.sigmoid().flatten().topk(min(top, logits.numel()))
    layer_name = decoder_layer % len(model.transformer.decoder.layers)
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
        draw = ImageDraw.Draw(picture)
        draw.rectangle(
            [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], outline=(0, 255, 0), width=2
        )
        label_name = class_names[label] if class_names and label < len(class_names) else f"#{label}"
        draw.text((cx - w / 2 + 3, cy - h / 2 + 2), f"{label_name} {score:.2f}", fill=(0, 255, 0))
        picture = _legend(picture, decoded["locations"].shape[3], f"decoder layer {layer_name}")
        path = out_dir / f"{name}_attention_{rank + 1}_query{query}.png"
        picture.convert("RGB").save(path)
        result.paths.append(path)
        result.detections.append({"query": query, "label": label, "score": score,
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
        layer_name = encoder_layer % len(model.transformer.encoder.layers)
        picture = _legend(picture, levels, f"encoder layer {layer_name}")
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
_PANEL = (360, 220)  # width, height of one curve


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


def _panel(title: str, xs: list[float], ys: list[float]) -> Image.Image:
    width, height = _PANEL
    left, right, top, bottom = 58, 12, 24, 26
    panel = Image.new("RGB", _PANEL, (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    draw.text((left, 5), title, fill=(0, 0, 0))
    draw.rectangle([left, top, width - right, height - bottom], outline=(160, 160, 160))
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + abs(y0) * 0.1 + 1e-9)

    def at(x: float, y: float) -> tuple[float, float]:
        u = left + (x - x0) / (x1 - x0) * (width - left - right)
        v = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        return u, v

    for value, v in ((y1, top), (y0, height - bottom)):
        draw.text((4, v - 6), f"{value:.3g}", fill=(80, 80, 80))
    draw.text((left, height - bottom + 6), f"step {x0:g}", fill=(80, 80, 80))
    draw.text((width - right - 70, height - bottom + 6), f"step {x1:g}", fill=(80, 80, 80))
    points = [at(x, y) for x, y in zip(xs, ys, strict=True)]
    if len(points) > 1:
        draw.line(points, fill=(30, 90, 200), width=2)
    for u, v in points if len(points) <= 30 else points[-1:]:
        draw.ellipse([u - 2.5, v - 2.5, u + 2.5, v + 2.5], fill=(30, 90, 200))
    return panel


def curves_picture(metrics: Path, out: Path, columns: int = 3) -> tuple[Path, list[str]]:
    """Loss terms, learning rate and val AP over steps from a run's metrics.jsonl, as one PNG
    of small panels; returns the picture and the curves it holds."""
    records = read_metrics(metrics)
    panels, names = [], []
    for key, kind, title in CURVES:
        rows = [r for r in records if r.get("type") == kind and isinstance(r.get(key), int | float)]
        if rows and all(isinstance(r.get("step"), int | float) for r in rows):
            panels.append(_panel(title, [r["step"] for r in rows], [r[key] for r in rows]))
            names.append(key)
    if not panels:
        raise DdetrError(f"{metrics}: no step or epoch records with losses, lr or AP to draw")
    rows_count = -(-len(panels) // columns)
    sheet = Image.new("RGB", (_PANEL[0] * columns, _PANEL[1] * rows_count), (255, 255, 255))
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % columns) * _PANEL[0], (i // columns) * _PANEL[1]))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out, names


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
    from ddetr_cli.draw import draw_detections
    from ddetr_cli.images import IMAGENET_MEAN, IMAGENET_STD

    splits = build_datasets(recipe, train=True)
    dataset, names = splits.train, splits.class_names or None
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(min(count, len(dataset))):
        raw, boxes, labels = dataset.load(index)
        left = draw_detections(raw, boxes, labels, torch.ones(len(labels)), names)
        pixels, target = dataset[(epoch, index)]
        augmented = ((pixels * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        h, w = augmented.shape[-2:]
        xyxy = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
        right = draw_detections(
            augmented, xyxy, target["labels"], torch.ones(len(target["labels"])), names
        )
        path = out_dir / f"{dataset.image_id(index)}_dataset.png"
        _side_by_side([_to_pil(left), _to_pil(right)]).save(path)
        paths.append(path)
    return paths


def contact_sheet(pictures: list[Path], out: Path, columns: int = 4, cell: int = 320) -> Path:
    """Thumbnails of `pictures` in a grid, for a look at many predictions at once."""
    if not pictures:
        raise DdetrError("no pictures to put on a sheet")
    rows = -(-len(pictures) // columns)
    sheet = Image.new("RGB", (columns * cell, rows * cell), (255, 255, 255))
    for i, path in enumerate(pictures):
        with Image.open(path) as picture:
            thumb = picture.convert("RGB")
            thumb.thumbnail((cell - 6, cell - 6))
        x, y = (i % columns) * cell + 3, (i // columns) * cell + 3
        sheet.paste(thumb, (x, y))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
