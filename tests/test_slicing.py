"""Sliced inference (#21): the tile grid, boxes shifted back, the merge, and sliced prediction
and evaluation end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import batched_nms
from typer.testing import CliRunner

from ddetr_cli.cli import app
from ddetr_cli.data.tiles import Tile, axis_starts, overlap_pixels, shift_boxes, tile_grid
from ddetr_cli.errors import UsageError
from ddetr_cli.inference.merge import cut_sides, greedy_groups, merge_detections
from ddetr_cli.inference.slicing import SlicedDetector, SliceOptions, tile_resize

# --------------------------------------------------------------------------- the tile grid


@pytest.mark.parametrize("tile", [1, 2, 7, 32, 64])
@pytest.mark.parametrize("overlap", [0.0, 0.2, 0.5, 0.9])
def test_tiles_cover_every_pixel_with_the_stated_overlap(tile, overlap):
    for size in range(1, 300):
        starts = axis_starts(size, tile, overlap)
        length = min(tile, size)
        ends = [s + length for s in starts]
        assert starts[0] == 0 and ends[-1] == size, (size, starts)
        assert starts == sorted(set(starts))
        least = overlap_pixels(length, overlap) if size > tile else 0
        for end, next_start in zip(ends, starts[1:], strict=False):
            assert end - next_start >= least, (size, starts)  # neighbours overlap enough
        # No more tiles than needed: one fewer could not give every neighbour that overlap.
        if len(starts) > 1:
            assert (len(starts) - 2) * (length - least) + length < size


def test_every_pixel_of_a_picture_is_in_a_tile():
    for height, width in [(100, 150), (257, 256), (31, 500), (64, 64)]:
        covered = np.zeros((height, width), dtype=int)
        tiles = tile_grid(height, width, (64, 48), 0.25)
        for t in tiles:
            covered[t.y0 : t.y1, t.x0 : t.x1] += 1
            assert (t.height, t.width) == (min(64, height), min(48, width))  # one size: batches
        assert covered.min() >= 1, (height, width)


def test_overlap_in_pixels_is_rounded_up_and_below_the_tile():
    assert overlap_pixels(256, 0.2) == 52  # 51.2
    assert overlap_pixels(30, 0.1) == 3  # not 4: 0.1 * 30 is 3.0000000000000004 in floats
    assert overlap_pixels(1, 0.5) == 0
    assert overlap_pixels(10, 0.99) == 9


def test_a_tile_larger_than_the_picture_is_one_tile():
    assert tile_grid(100, 80, (256, 256), 0.2) == [Tile(0, 0, 80, 100)]
    assert tile_grid(100, 300, (256, 256), 0.2) == [Tile(0, 0, 256, 100), Tile(44, 0, 300, 100)]


@pytest.mark.parametrize(
    "tile, overlap, message",
    [
        ((0, 256), 0.2, "--slice H W: a tile's sides must be at least 1 pixel, got 0 256"),
        ((256, -3), 0.2, "--slice H W: a tile's sides must be at least 1 pixel, got 256 -3"),
        ((256, 256), 1.0, "--overlap must be in [0, 1), got 1"),
        ((256, 256), -0.1, "--overlap must be in [0, 1), got -0.1"),
    ],
)
def test_bad_tiling_is_refused_in_one_line(tile, overlap, message):
    with pytest.raises(UsageError) as error:
        SliceOptions(tile, overlap)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "args, message",
    [
        (["--slice", "0", "64"], "error: --slice H W: a tile's sides must be at least 1 pixel"),
        (["--slice", "64", "64", "--overlap", "1.5"], "error: --overlap must be in [0, 1)"),
        (["--overlap", "0.3"], "error: --overlap goes with --slice H W"),
        (["--slice", "64", "64", "--merge", "wbf"], "error: --merge must be one of nms, nmm"),
        (["--slice", "64", "64", "--max-detections", "0"], "error: --max-detections must be"),
        (["--slice", "64", "64", "--match-threshold", "1.5"], "error: --match-threshold must be"),
    ],
)
@pytest.mark.parametrize("command", [["predict", "x.png"], ["evaluate"]])
def test_bad_slice_options_exit_2_with_one_line(command, args, message):
    result = CliRunner().invoke(app, [*command, "-w", "no_such.pth", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_slice_scores_no_predictions_file():
    result = CliRunner().invoke(app, ["evaluate", "--predictions", "p.json", "--annotations",
                                      "a.json", "--slice", "64", "64"])  # fmt: skip
    assert result.exit_code == 2
    assert result.output.strip() == "error: --slice runs a model: give --weights, not --predictions"


def test_tiles_enlarged_by_the_evaluation_resize_but_never_shrunk():
    assert tile_resize(Tile(0, 0, 512, 512), 800, 1333) == (800, 1333)  # enlarged to 800
    assert tile_resize(Tile(0, 0, 512, 512), 256, 256) == (512, None)  # left at 512
    assert tile_resize(Tile(0, 0, 128, 128), 128, 128) == (128, None)


# --------------------------------------------------------------------------- shifting back


def test_shift_boxes_adds_the_tile_offset_exactly():
    boxes = torch.tensor([[0.5, 1.25, 10.0, 20.75], [3.0, 4.0, 5.0, 6.0]])
    shifted = shift_boxes(boxes, Tile(96, 43, 160, 107))
    assert torch.equal(shifted, boxes + torch.tensor([96.0, 43.0, 96.0, 43.0]))


class CentreBoxModel(torch.nn.Module):
    """One detection per picture: class 1, the box of its middle fifth, score sigmoid(3)."""

    def forward(self, images):
        n = len(images)
        logits = torch.full((n, 1, 2), -9.0)
        logits[:, 0, 1] = 3.0
        boxes = torch.tensor([0.5, 0.5, 0.2, 0.2]).expand(n, 1, 4)
        return {"pred_logits": logits, "pred_boxes": boxes}


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_tile_boxes_are_shifted_back_into_the_picture(batch_size):
    picture = torch.zeros(3, 150, 200, dtype=torch.uint8)
    options = SliceOptions((64, 64), overlap=0.0, merge="nms", match="iou")
    detector = SlicedDetector(CentreBoxModel(), options, (64, 64), 1, batch_size=batch_size)
    found = detector([picture])[0]
    tiles = tile_grid(150, 200, (64, 64), 0.0)  # 3 x 4: 150 and 200 do not divide by 64
    assert len(tiles) == 12 and detector.tiles == 12 and detector.pictures == 1
    # x0 = tile x0 + 0.4 * 64 in float32, as post_process computes and shift_boxes adds.
    expected = torch.stack([
        torch.tensor([0.4, 0.4, 0.6, 0.6]) * 64 + torch.tensor([t.x0, t.y0, t.x0, t.y0])
        for t in tiles
    ])  # fmt: skip
    order = torch.argsort(found["boxes"][:, 0] * 1000 + found["boxes"][:, 1])
    reference = torch.argsort(expected[:, 0] * 1000 + expected[:, 1])
    assert torch.equal(found["boxes"][order], expected[reference])
    assert found["labels"].tolist() == [1] * 12
    assert torch.allclose(found["scores"], torch.sigmoid(torch.tensor(3.0)).expand(12))


# --------------------------------------------------------------------------- merging

# Hand-made detections: A; B mostly on A (IoU 0.68, IoS 0.81); C inside A (IoU 0.4, IoS 1);
# D = A of another class; E apart.
BOXES = torch.tensor(
    [[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 4], [0, 0, 10, 10], [50, 50, 60, 60]],
    dtype=torch.float32,
)
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
LABELS = torch.tensor([0, 0, 0, 1, 0])


@pytest.mark.parametrize(
    "merge, match, kept",
    [
        ("nms", "iou", [0, 2, 3, 4]),  # B goes (IoU 0.68 > 0.5); C stays (0.4)
        ("nms", "ios", [0, 3, 4]),  # B and C go (IoS 0.81 and 1.0)
        ("nmm", "iou", [0, 2, 3, 4]),
        ("nmm", "ios", [0, 3, 4]),
    ],
)
def test_merge_of_hand_made_boxes(merge, match, kept):
    boxes, scores, labels = merge_detections(BOXES, SCORES, LABELS, merge, match, 0.5)
    assert torch.equal(boxes, BOXES[kept])  # no side is cut: every kept box is its own
    assert torch.equal(scores, SCORES[kept]) and torch.equal(labels, LABELS[kept])


def test_merge_puts_a_cut_box_together_from_its_group():
    """A (the best) is cut on the right by a tile edge; B, in its group, is not: the merged box
    takes B's right side and keeps A's other sides. C, cut nowhere, stays as it is."""
    cut = torch.zeros(5, 4, dtype=torch.bool)
    cut[0, 2] = True
    boxes, scores, _ = merge_detections(BOXES, SCORES, LABELS, "nmm", "ios", 0.5, cut)
    assert boxes[0].tolist() == [0, 0, 11, 10] and scores[0] == pytest.approx(0.9)
    nms_boxes, _, _ = merge_detections(BOXES, SCORES, LABELS, "nms", "ios", 0.5, cut)
    assert nms_boxes[0].tolist() == [0, 0, 10, 10]  # NMS keeps the best box as it is


def test_merge_of_pieces_all_cut_reaches_the_farthest():
    boxes = torch.tensor([[10.0, 0, 30, 10], [20.0, 0, 40, 10]])  # right cut, left cut
    cut = torch.tensor([[False, False, True, False], [True, False, False, False]])
    merged, _, _ = merge_detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]),
                                    "nmm", "iou", 0.3, cut)  # fmt: skip
    assert merged.tolist() == [[10, 0, 40, 10]]


def test_greedy_groups_keep_what_batched_nms_keeps():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(600, 2, generator=generator) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(600, 2, generator=generator) * 30], dim=1)
    scores = torch.randperm(600, generator=generator).float() / 600  # distinct
    labels = torch.randint(0, 3, (600,), generator=generator)
    firsts = sorted(int(g[0]) for g in greedy_groups(boxes, scores, labels, "iou", 0.5))
    assert firsts == sorted(batched_nms(boxes, scores, labels, 0.5).tolist())
    assert 100 < len(firsts) < 600  # the test means something: some go, most stay


def test_cut_sides_are_tile_edges_inside_the_picture():
    boxes = torch.tensor([[0.0, 10, 63.5, 20], [64.5, 10, 70, 20], [70, 10, 80, 99.9]])
    cut = cut_sides(boxes, (0, 0, 64, 64), (100, 200))  # the picture's edges are not cuts
    assert cut.tolist() == [[False, False, True, False], [False, False, True, False],
                            [False, False, True, True]]  # fmt: skip
    cut = cut_sides(boxes, (64, 36, 128, 100), (100, 200))
    assert cut.tolist() == [[True, True, False, False], [True, True, False, False],
                            [False, True, False, False]]  # fmt: skip


# --------------------------------------------------------------------------- an edge box


class WhiteBoxModel(torch.nn.Module):
    """Finds the white pixels of each (normalised) picture: one class-0 detection of their
    box, score sigmoid(5); a picture without any gets a box nowhere at score sigmoid(-9)."""

    def forward(self, images):
        logits, boxes = [], []
        for image in images:
            h, w = image.shape[-2:]
            ys, xs = (image[0] > 0).nonzero(as_tuple=True)
            if len(xs):
                x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                boxes.append(torch.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h,
                                          (x1 - x0) / w, (y1 - y0) / h]).float())  # fmt: skip
                logits.append(torch.tensor([5.0]))
            else:
                boxes.append(torch.tensor([0.5, 0.5, 0.1, 0.1]))
                logits.append(torch.tensor([-9.0]))
        return {
            "pred_logits": torch.stack(logits)[:, None],
            "pred_boxes": torch.stack(boxes)[:, None],
        }


def _white_box_picture() -> torch.Tensor:
    picture = torch.zeros(3, 100, 160, dtype=torch.uint8)
    picture[:, 30:60, 50:90] = 255  # x 50..90, y 30..60
    return picture


def test_a_box_on_a_tile_edge_found_twice_becomes_one():
    """Tiles of 64 with 16 pixels of overlap: columns 0-64, 48-112, 96-160, rows 0-64, 36-100.
    Four tiles see the object: cut at x 64, at y 36, both, or whole. NMM puts it together."""
    picture = _white_box_picture()
    sizes = (64, 64)
    merged = SlicedDetector(WhiteBoxModel(), SliceOptions((64, 64), 0.25), sizes, 1,
                            min_score=0.5)([picture])[0]  # fmt: skip
    assert merged["boxes"].tolist() == [[50, 30, 90, 60]]
    nms = SlicedDetector(WhiteBoxModel(), SliceOptions((64, 64), 0.25, merge="nms", match="iou"),
                         sizes, 1, min_score=0.5)([picture])[0]  # fmt: skip
    # NMS at IoU 0.5 keeps the piece cut at x 64 (IoU 0.35 with the whole box): what NMM is for.
    assert sorted(nms["boxes"].tolist()) == [[50, 30, 64, 60], [50, 30, 90, 60]]


def test_the_whole_picture_pass_adds_its_detections():
    picture = _white_box_picture()
    options = SliceOptions((64, 64), 0.25, full=True)
    detector = SlicedDetector(WhiteBoxModel(), options, (64, 64), 1, min_score=0.5)
    found = detector([picture])[0]
    assert found["boxes"].tolist() == [[50, 30, 90, 60]]  # the same object, once
    assert detector.tiles == 6


# --------------------------------------------------------------------------- end to end


def _tiny_shapes_model(val_images=4):
    from ddetr_cli.model import build_model
    from ddetr_cli.recipe import load_recipe

    recipe = load_recipe(
        "recipes/shapes.yaml",
        ["model.enc_layers=1", "model.dec_layers=1", "model.hidden_dim=32",
         "model.dim_feedforward=64", f"data.shapes.val_images={val_images}"],
    )  # fmt: skip
    torch.manual_seed(0)
    return build_model(recipe).eval(), recipe


def _tiny_shapes_checkpoint(tmp_path, val_images=4):
    from ddetr_cli.weights import save_checkpoint

    model, recipe = _tiny_shapes_model(val_images)
    return save_checkpoint(tmp_path / "ckpt.pth", model, recipe)


def test_sliced_evaluation_of_pictures_that_are_one_tile_equals_unsliced(tmp_path):
    """The shapes pictures are 128x128 and evaluated at 128: one 128x128 tile is the picture
    as the unsliced evaluation feeds it, and one pass has nothing to merge. (Batch 1 in both:
    the model is not batch-invariant in its last bits, and a picture's one tile is a batch of
    one.)"""
    from ddetr_cli.evaluation.evaluate import evaluate_checkpoint

    weights = _tiny_shapes_checkpoint(tmp_path)
    plain = evaluate_checkpoint(weights, out_dir=tmp_path / "plain")
    sliced = evaluate_checkpoint(weights, out_dir=tmp_path / "sliced",
                                 slicing=SliceOptions((128, 128), full=True))  # fmt: skip
    assert plain.results == sliced.results and len(plain.results) == 4 * 90
    assert plain.stats == sliced.stats
    assert sliced.slicing["tiles_per_picture"] == 1 and plain.slicing is None


@pytest.mark.slow  # the export takes a minute
def test_sliced_predict_runs_an_onnx_export(tmp_path):
    """--slice through the same model call as predict: an exported file runs the tiles."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ddetr_cli.export.writer import export_onnx
    from ddetr_cli.inference.predict import run_predict

    model, recipe = _tiny_shapes_model()
    weights = _tiny_shapes_checkpoint(tmp_path)
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, recipe, onnx_path, image_size=(128, 128), check=False)
    picture = tmp_path / "big.png"
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(picture)
    summaries = {}
    for name, w in (("pth", weights), ("onnx", onnx_path)):
        summaries[name] = run_predict([picture], w, threshold=0.0, out_dir=tmp_path / name,
                                      batch_size=3, progress=False,
                                      slicing=SliceOptions((128, 128)))  # fmt: skip
    assert summaries["onnx"].slicing["tiles_per_picture"] == 6  # 2 rows x 3 columns
    found = {n: json.loads((tmp_path / n / "predictions.json").read_text()) for n in summaries}
    assert len(found["onnx"]) == len(found["pth"]) > 90
    for a, b in zip(found["pth"][:20], found["onnx"][:20], strict=True):
        assert a["category_id"] == b["category_id"]
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.05)


def test_visualize_predictions_and_bench_slice(tmp_path):
    weights = _tiny_shapes_checkpoint(tmp_path)
    picture = tmp_path / "big.png"
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(picture)
    runner = CliRunner()
    shown = runner.invoke(
        app,
        [
            "visualize",
            "predictions",
            str(picture),
            "-w",
            str(weights),
            "--slice",
            "128",
            "128",
            "-t",
            "0",
            "-o",
            str(tmp_path / "v"),
        ],
    )
    assert shown.exit_code == 0, shown.output
    assert "tiles per picture: 6 (128x128, overlap 0.2;" in shown.output
    assert (tmp_path / "v" / "big_pred.png").is_file() and (tmp_path / "v" / "sheet.png").is_file()
    report = tmp_path / "bench.json"
    timed = runner.invoke(app, ["bench", "-w", str(weights), "--slice", "128", "128",
                                "--image-size", "200", "300", "-b", "1,4", "--warmup", "0",
                                "--iters", "1", "--json", str(report)])  # fmt: skip
    assert timed.exit_code == 0, timed.output
    sliced = json.loads(report.read_text())["slice"]
    assert sliced["tiles_per_picture"] == 6 and sliced["picture_size"] == [200, 300]
    assert [r["batch_size"] for r in sliced["results"]] == [1, 4]
    assert sliced["results"][0]["gain_vs_batch_1"] == 1.0
    assert json.loads(report.read_text())["gflops"] is None  # --slice times; --flops counts
