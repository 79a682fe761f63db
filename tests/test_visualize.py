"""`ddetr visualize attention`: sampling points drawn where the model samples."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ddetr_cli.cli import app
from ddetr_cli.errors import DdetrError
from ddetr_cli.model import build_model
from ddetr_cli.recipe import load_recipe
from ddetr_cli.viz.attention import attention_pictures
from ddetr_cli.weights import save_checkpoint

TINY = ["model.enc_layers=1", "model.dec_layers=2", "model.hidden_dim=32",
        "model.dim_feedforward=64"]  # fmt: skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # random weights, but the same ones every run
    return build_model(load_recipe("recipes/shapes.yaml", TINY)).eval()


def _picture() -> torch.Tensor:
    return torch.full((3, 96, 128), 40, dtype=torch.uint8)


def test_capture_is_off_by_default_and_keeps_the_official_shapes(model):
    attn = model.transformer.decoder.layers[0].cross_attn
    assert attn.capture is False and attn.captured is None
    attn.capture = True
    with torch.no_grad():
        model([torch.randn(3, 64, 64)])
    attn.capture = False
    captured = attn.captured
    assert captured["locations"].shape == (1, 30, 8, 3, 4, 2)
    assert captured["weights"].shape == (1, 30, 8, 3, 4)
    torch.testing.assert_close(captured["weights"].sum((-1, -2)), torch.ones(1, 30, 8))


@pytest.mark.parametrize(("number", "index"), [(1, 0), (2, 1), (-1, 1)])
def test_points_are_drawn_where_the_model_samples(model, tmp_path, number, index):
    """Decoder layers are numbered from 1 (-1: the last), in the option and the legend."""
    picture = _picture()
    result = attention_pictures(model, picture, "flat", tmp_path, min_size=96, max_size=128,
                                top=2, pixel=(64, 48), decoder_layer=number)  # fmt: skip
    assert len(result.paths) == 3 and all(p.is_file() for p in result.paths)
    assert [d["picture"] for d in result.detections] == [str(p) for p in result.paths[:2]]
    assert result.detections[0]["score"] >= result.detections[1]["score"]
    assert result.decoder_layer == index + 1 and result.encoder_layer == 1
    layer = model.transformer.decoder.layers[index].cross_attn
    layer.capture = True
    from ddetr_cli.data.transforms import eval_transform

    with torch.no_grad():
        model([eval_transform(picture, 96, 128)])
    layer.capture = False
    query = result.detections[0]["query"]
    locations = layer.captured["locations"][0, query].reshape(-1, 2)
    weights = layer.captured["weights"][0, query].flatten()
    pixels = (locations * torch.tensor([128, 96])).long()
    # The heaviest point inside the picture.
    inside = [i for i in weights.argsort(descending=True).tolist()
              if 0 <= pixels[i, 0] < 128 and 0 <= pixels[i, 1] < 96]  # fmt: skip
    assert inside, "no sampling point inside the picture"
    x, y = pixels[inside[0]].tolist()
    drawn = np.asarray(Image.open(result.paths[0]).convert("RGB")).astype(int)
    assert drawn.shape[1] == 128 and drawn.shape[0] > 96  # the legend is a strip above it
    drawn = drawn[drawn.shape[0] - 96 :]
    plain = picture.permute(1, 2, 0).numpy().astype(int)
    assert np.abs(drawn[y, x] - plain[y, x]).sum() > 0  # that point is drawn
    assert (np.abs(drawn - plain).sum(-1) > 0).mean() < 0.9  # most of the picture is untouched


@pytest.mark.parametrize("size", [(128, 128), (96, 64), (1200, 800)])
def test_the_legend_fits_the_picture(size):
    from ddetr_cli.viz.attention import LEVEL_COLOURS, _legend

    picture = Image.new("RGBA", size, (40, 40, 40, 255))
    framed = np.asarray(_legend(picture, 4, "decoder layer 5").convert("RGB")).astype(int)
    strip = framed[: framed.shape[0] - size[1]]
    assert framed.shape[1] == size[0] and 0 < strip.shape[0] <= max(0.5 * size[1], 60)
    assert (framed[strip.shape[0] :] == 40).all()  # the picture itself is not covered
    for colour in LEVEL_COLOURS[:4]:  # every level's dot is in the strip, none is cut off
        hits = np.nonzero((np.abs(strip - colour).sum(-1) < 10).any(0))[0]
        assert len(hits) >= 4 and hits.max() < size[0] - 1, colour


def test_the_attention_box_stands_out_from_the_picture(model, tmp_path):
    """The box used to be green whatever the picture: invisible on green shapes."""
    green = torch.zeros((3, 96, 128), dtype=torch.uint8)
    green[1] = 230
    result = attention_pictures(model, green, "g", tmp_path, min_size=96, max_size=128, top=1)
    drawn = np.asarray(Image.open(result.paths[0]).convert("RGB")).astype(int)[-96:]
    magenta = (drawn == (255, 0, 255)).all(-1)  # the vivid colour farthest from green
    assert magenta.sum() >= 40  # the box's line and its label's plate
    assert not ((drawn == (0, 255, 0)).all(-1)).any()


def test_bad_layer_and_pixel_are_one_clear_line(model, tmp_path):
    with pytest.raises(DdetrError, match="the model has 2 decoder layers"):
        attention_pictures(model, _picture(), "x", tmp_path, decoder_layer=5)
    with pytest.raises(DdetrError, match=r"--decoder-layer 0: layers are numbered from 1 \(1-2"):
        attention_pictures(model, _picture(), "x", tmp_path, decoder_layer=0)
    with pytest.raises(DdetrError, match="--encoder-layer -2: the model has 1 encoder layer "):
        attention_pictures(model, _picture(), "x", tmp_path, encoder_layer=-2)
    with pytest.raises(DdetrError, match="outside the 128x96 picture"):
        attention_pictures(model, _picture(), "x", tmp_path, pixel=(500, 10))


def test_cli_writes_and_lists_the_pictures(tmp_path):
    recipe = load_recipe("recipes/shapes.yaml", TINY)
    weights = save_checkpoint(tmp_path / "ckpt.pth", build_model(recipe), recipe)
    Image.new("RGB", (128, 128), (30, 60, 90)).save(tmp_path / "p.png")
    args = ["visualize", "attention", str(tmp_path / "p.png"), "-w", str(weights), "--top", "2",
            "-o", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(app, args, terminal_width=300)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 2 and all(name.startswith("p_attention_") for name in written)
    assert all(name in result.output for name in written)
    lines = result.output.splitlines()
    assert lines[0] == "decoder layer 2 of 2, the top 2 detections:"
    for line in lines[1:]:  # classes by name, as everywhere
        assert re.match(r"query \d+ \((circle|rectangle|triangle), score 0\.\d\d\): ", line), line


def _write_metrics(path, lines):
    import json

    path.write_text("\n".join(json.dumps(r) if isinstance(r, dict) else r for r in lines) + "\n")
    return path


def test_curves_draw_every_logged_series(tmp_path):
    from ddetr_cli.viz.curves import curves_picture

    steps = [{"type": "step", "step": s, "lr": 1e-4, "loss": 10 / s, "loss_ce": 1 / s}
             for s in range(10, 110, 10)]  # fmt: skip
    epochs = [{"type": "epoch", "step": 50, "AP": 0.2}, {"type": "epoch", "step": 100, "AP": 0.5}]
    metrics = _write_metrics(tmp_path / "metrics.jsonl", [*steps, *epochs])
    path, names = curves_picture(metrics, tmp_path / "curves.png")
    assert names == ["loss", "loss_ce", "lr", "AP"]
    sheet = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert sheet.shape == (2 * 220, 3 * 360, 3)
    blue = np.abs(sheet - [30, 90, 200]).sum(-1) < 30
    for i in range(len(names)):  # every panel has its curve drawn
        row, column = divmod(i, 3)
        assert blue[row * 220 : (row + 1) * 220, column * 360 : (column + 1) * 360].sum() > 20
    assert blue[220:, 360:].sum() == 0  # and the unused panels stay empty


@pytest.mark.parametrize(
    "lines, message",
    [(["{not json"], "metrics.jsonl:1: not a JSON line"),
     ([{"type": "step", "step": 1}], "no step or epoch records with losses, lr or AP")],
)  # fmt: skip
def test_curves_bad_metrics_are_one_clear_line(tmp_path, lines, message):
    _write_metrics(tmp_path / "metrics.jsonl", lines)
    result = CliRunner().invoke(app, ["visualize", "curves", str(tmp_path)])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and message in result.output


def test_dataset_view_draws_the_ground_truth_on_both_sides(tmp_path):
    from ddetr_cli.data import build_datasets
    from ddetr_cli.viz.dataset import dataset_pictures

    recipe = load_recipe("recipes/shapes.yaml", ["data.augment=paper"])
    paths = dataset_pictures(recipe, tmp_path, count=2)
    assert [p.name for p in paths] == ["1_dataset.png", "2_dataset.png"]
    raw, boxes, _ = build_datasets(recipe).train.load(0)
    sheet = np.asarray(Image.open(paths[0]).convert("RGB")).astype(int)
    stored = sheet[: raw.shape[1], : raw.shape[2]]
    plain = raw.permute(1, 2, 0).numpy().astype(int)
    x1, y1 = (int(v) - 1 for v in boxes[0, 2:])  # the box's bottom-right corner is outlined
    assert np.abs(stored[y1, x1] - plain[y1, x1]).sum() > 0
    assert sheet.shape[1] > raw.shape[2] + 8  # the augmented sample stands beside it


def test_predictions_view_writes_pictures_and_a_sheet(tmp_path):
    recipe = load_recipe("recipes/shapes.yaml", TINY)
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "ckpt.pth", build_model(recipe), recipe)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i in range(3):
        Image.new("RGB", (128, 96), (40 * i, 60, 90)).save(pictures / f"{i}.png")
    args = ["visualize", "predictions", str(pictures), "-w", str(weights), "-t", "0",
            "-o", str(tmp_path / "out"), "--columns", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args, terminal_width=300)
    assert result.exit_code == 0, result.output
    sheet = np.asarray(Image.open(tmp_path / "out" / "sheet.png").convert("RGB")).astype(int)
    size = 128 + 6  # cells fit the largest picture: 128 pixels and a 3-pixel border
    assert sheet.shape == (2 * size, 2 * size, 3)
    for row, column in ((0, 0), (0, 1), (1, 0)):  # three thumbnails, each with boxes drawn
        cell = sheet[
            row * size + 3 : (row + 1) * size - 3, column * size + 3 : (column + 1) * size - 3
        ]
        assert len(np.unique(cell.reshape(-1, 3), axis=0)) > 2
        # The thumbnail fills its cell: picture rows (white box edges aside) span 96 of 128.
        assert (cell != 255).any(-1).any(1).mean() > 0.7
    assert (sheet[size:, size:] == 255).all()  # the fourth cell is empty


def test_curves_out_is_a_folder_or_a_picture(tmp_path):
    """`-o` is a folder as on every visualize command (curves.png goes in it); a path with a
    picture suffix is the picture itself."""
    run = tmp_path / "run"
    run.mkdir()
    steps = [{"type": "step", "step": s, "lr": 2e-4, "loss": 5 / s, "loss_bbox": 2 / s}
             for s in range(1, 40)]  # fmt: skip
    _write_metrics(run / "metrics.jsonl", steps)
    for out, expected in (
        (tmp_path / "folder", tmp_path / "folder" / "curves.png"),  # not there yet
        (run, run / "curves.png"),  # an existing folder
        (tmp_path / "chart.png", tmp_path / "chart.png"),
    ):
        result = CliRunner().invoke(app, ["visualize", "curves", str(run), "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert expected.is_file() and str(expected) in result.output
        with Image.open(expected) as picture:
            assert picture.size == (3 * 360, 220)  # loss, loss_bbox, lr: one row of three
    default = CliRunner().invoke(app, ["visualize", "curves", str(run / "metrics.jsonl")])
    assert default.exit_code == 0 and "loss, loss_bbox, lr:" in default.output
