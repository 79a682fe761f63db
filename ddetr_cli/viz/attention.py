"""The attention view: where deformable attention looks, for the top detections and a pixel."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from ddetr_cli.errors import DdetrError, UsageError
from ddetr_cli.model.postprocess import top_detections
from ddetr_cli.viz.draw import (
    contrasting_color,
    draw_labelled_boxes,
    drawing_sizes,
    font,
    label_text,
    to_pil,
)

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


def _draw_box(picture: Image.Image, pixels: np.ndarray, box: list[float], text: str) -> None:
    """The box as predict draws it (clipped to the picture), labelled, in the colour that stands
    out most from the picture's ``pixels`` under it."""
    width, height = picture.size
    x0, y0 = max(box[0], 0), max(box[1], 0)
    clipped = (x0, y0, max(x0, min(box[2], width - 1)), max(y0, min(box[3], height - 1)))
    colour = contrasting_color(pixels, clipped, drawing_sizes(width, height)[0])
    draw_labelled_boxes(picture, [clipped], [text], [colour])


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
    base = to_pil(image.cpu())
    pixels = np.asarray(base)
    result = AttentionPictures(
        decoder_layer=decoder_number,
        encoder_layer=encoder_number,
        decoder_layers=len(model.transformer.decoder.layers),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    boxes = outputs["pred_boxes"][:1].float().cpu()
    scale = torch.tensor([width, height, width, height], dtype=boxes.dtype)
    found = top_detections(outputs["pred_logits"][:1].float().cpu(), boxes, scale, top)
    scores, labels, xyxy, queries = (t[0].tolist() for t in found)
    for rank, (score, label, box, query) in enumerate(
        zip(scores, labels, xyxy, queries, strict=True)
    ):
        picture = _draw_points(
            base,
            decoded["locations"][0, query].float().cpu(),
            decoded["weights"][0, query].float().cpu(),
            decoded["reference_points"][0, query, 0].float().cpu(),
        )
        _draw_box(picture, pixels, box, label_text(label, score, class_names))
        picture = _legend(picture, decoded["locations"].shape[3], f"decoder layer {decoder_number}")
        path = out_dir / f"{name}_attention_{rank + 1}_query{query}.png"
        picture.convert("RGB").save(path)
        result.paths.append(path)
        result.detections.append(
            {
                "query": query,
                "label": label,
                "score": score,
                "name": label_text(label, None, class_names),
                "picture": str(path),
            }
        )
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
