"""`ddetr data slice` (#21): any data set as a COCO folder of tiles that `ddetr data check`
reads; and the small-object shapes task it is made for."""

from __future__ import annotations

import json
from pathlib import Path

import fake_datasets
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ddetr_cli.cli import app
from ddetr_cli.data import shapes
from ddetr_cli.data.check import recipe_for
from ddetr_cli.data.slice import slice_dataset
from ddetr_cli.data.sources import load_source
from ddetr_cli.data.tiles import Tile, boxes_in_tile
from ddetr_cli.errors import DdetrError


def _coco_folder(root: Path) -> Path:
    """A 100x150 (h x w) val picture with three boxes: one inside the first tile of 64, one
    across the edge at x 64, and one mostly in the last column."""
    (root / "val2017").mkdir(parents=True)
    pixels = np.zeros((100, 150, 3), np.uint8)
    pixels[10:30, 10:30] = 200
    Image.fromarray(pixels).save(root / "val2017" / "a.png")
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 0, "bbox": [10, 10, 20, 20], "area": 400},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [56, 10, 20, 20], "area": 400},
        {"id": 3, "image_id": 1, "category_id": 0, "bbox": [130, 80, 20, 20], "area": 200},
    ]
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 150, "height": 100}],
            "annotations": annotations,
            "categories": [{"id": 0, "name": "dot"}, {"id": 1, "name": "bar"}]}  # fmt: skip
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    return root


def test_boxes_in_a_tile_are_clipped_and_mostly_outside_ones_dropped():
    import torch

    boxes = torch.tensor([[10.0, 10, 30, 30], [56, 10, 76, 30], [60, 10, 80, 30]])
    clipped, index = boxes_in_tile(boxes, Tile(0, 0, 64, 64), 0.4)
    assert index.tolist() == [0, 1]  # box 1 is 8/20 visible, box 2 only 4/20
    assert clipped.tolist() == [[10, 10, 30, 30], [56, 10, 64, 30]]
    clipped, index = boxes_in_tile(boxes, Tile(43, 36, 107, 100), 0.5)
    assert index.tolist() == [] and clipped.shape == (0, 4)  # above the tile: none visible


def test_slice_writes_tiles_with_clipped_boxes(tmp_path):
    source = load_source(recipe_for(_coco_folder(tmp_path / "src"), [])["data"], None,
                         ("train", "val"), require_train=False)  # fmt: skip
    written = slice_dataset(source, tmp_path / "out", (64, 64), overlap=0.0, min_visible=0.4,
                            empty_ratio=0.0)  # fmt: skip
    # Columns 0, 43, 86 and rows 0, 36 (150 and 100 do not divide by 64).
    val = written["val"]
    coco = json.loads(val.annotations.read_text())
    tiles = {tuple(im["tile"]): im for im in coco["images"]}
    boxes = {}
    for ann in coco["annotations"]:
        boxes.setdefault(tuple(tiles_by_id(coco)[ann["image_id"]]["tile"]), []).append(
            (ann["category_id"], ann["bbox"], round(ann["area"], 3))
        )
    assert boxes == {
        (0, 0, 64, 64): [(0, [10, 10, 20, 20], 400), (1, [56, 10, 8, 20], 160)],
        (43, 0, 107, 64): [(1, [13, 10, 20, 20], 400)],
        (86, 36, 150, 100): [(0, [44, 44, 20, 20], 200)],
    }
    assert (val.pictures, val.tiles, val.tiles_with_boxes, val.empty_dropped) == (1, 3, 3, 3)
    assert (val.boxes_read, val.boxes, val.boxes_in_no_tile) == (3, 4, 0)
    first = Image.open(tmp_path / "out" / "val2017" / tiles[(0, 0, 64, 64)]["file_name"])
    assert first.size == (64, 64) and np.asarray(first)[15, 15].tolist() == [200, 200, 200]
    assert {im["source"] for im in coco["images"]} == {"a.png"}
    assert [c["name"] for c in coco["categories"]] == ["dot", "bar"]


def tiles_by_id(coco):
    return {im["id"]: im for im in coco["images"]}


@pytest.mark.parametrize("ratio, kept", [(0.0, 0), (0.34, 1), (1.0, 3), (5.0, 3)])
def test_empty_tiles_are_kept_at_the_chosen_ratio(tmp_path, ratio, kept):
    source = load_source(recipe_for(_coco_folder(tmp_path / "src"), [])["data"], None,
                         ("val",), require_train=False)  # fmt: skip
    written = slice_dataset(source, tmp_path / "out", (64, 64), 0.0, 0.4, empty_ratio=ratio)
    assert written["val"].tiles == 3 + kept and written["val"].empty_dropped == 3 - kept


def test_sliced_folder_passes_data_check_and_refuses_a_full_folder(tmp_path):
    src = _coco_folder(tmp_path / "src")
    out = tmp_path / "tiles"
    runner = CliRunner()
    result = runner.invoke(app, ["data", "slice", str(src), str(out), "--size", "64", "64"])
    assert result.exit_code == 0, result.output
    assert "val: 1 of 1 pictures -> " in result.output
    check = runner.invoke(app, ["data", "check", str(out)])
    assert check.exit_code == 0, check.output
    assert "format: coco" in check.output and check.output.strip().endswith("ok")
    again = runner.invoke(app, ["data", "slice", str(src), str(out), "--size", "64", "64"])
    assert again.exit_code == 1
    assert again.output.strip() == f"error: {out}: exists and is not an empty folder"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "0", "64"], "error: --size H W: a tile's sides must be at least 1 pixel"),
        (["--size", "64", "64", "--overlap", "1"], "error: --overlap must be in [0, 1)"),
        (["--size", "64", "64", "--min-visible", "2"], "error: --min-visible must be in [0, 1]"),
        (["--size", "64", "64", "--empty-ratio", "-1"], "error: --empty-ratio must be at least"),
    ],
)
def test_bad_slice_values_exit_2_with_one_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["data", "slice", str(tmp_path), str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_an_unreadable_picture_is_named_and_exits_1(tmp_path):
    src = _coco_folder(tmp_path / "src")
    annotations = src / "annotations" / "instances_val2017.json"
    coco = json.loads(annotations.read_text())
    coco["images"].append({"id": 2, "file_name": "b.png", "width": 150, "height": 100})
    annotations.write_text(json.dumps(coco))
    (src / "val2017" / "b.png").write_bytes(b"not a picture")
    result = CliRunner().invoke(app, ["data", "slice", str(src), str(tmp_path / "o"),
                                      "--size", "64", "64"])  # fmt: skip
    assert result.exit_code == 1
    assert "val: 1 of 2 pictures -> " in result.output
    assert f"skipped: {src / 'val2017' / 'b.png'}: cannot read the picture" in result.output
    assert result.output.strip().splitlines()[-1] == "error: 1 pictures could not be read"


def test_slicing_nothing_readable_writes_no_folder(tmp_path):
    src = _coco_folder(tmp_path / "src")
    (src / "val2017" / "a.png").unlink()
    source = load_source(recipe_for(src, [])["data"], None, ("val",), require_train=False)
    with pytest.raises(DdetrError) as error:
        slice_dataset(source, tmp_path / "out", (64, 64))
    assert str(error.value) == f"wrote no tile: {src / 'val2017' / 'a.png'}: no such file"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["ultralytics_yolo", "roboflow_coco", "roboflow_voc",
                                    "cvat_yolo"])  # fmt: skip
def test_any_layout_is_sliced(tmp_path, layout):
    """Tiles of the pictures' own size: every split, every box, as the reader read them."""
    root = getattr(fake_datasets, layout)(tmp_path / "src")
    source = load_source(recipe_for(root, [])["data"], None, ("train", "val", "test"),
                         require_train=False)  # fmt: skip
    written = slice_dataset(source, tmp_path / "out", (128, 128), empty_ratio=1.0)
    for name, split in written.items():
        assert (split.pictures, split.tiles) == (fake_datasets.COUNTS[name],) * 2, name
        assert split.boxes == split.boxes_read == fake_datasets.box_count(name), name
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- the small task


def test_small_task_pictures_are_large_with_many_small_shapes():
    first = shapes.make_small_picture(0, 0)
    again = shapes.make_small_picture(0, 0)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.boxes, again.boxes)
    height, width = first.image.shape[:2]
    assert 1024 <= height <= 1536 and 1024 <= width <= 1536
    sides = np.concatenate([first.boxes[:, 2:] - first.boxes[:, :2]])
    assert sides.min() >= 8 and sides.max() <= 32
    assert len(first.boxes) > 50 and set(first.labels.tolist()) == {0, 1, 2}
    assert (first.boxes[:, 2] <= width).all() and (first.boxes[:, 3] <= height).all()
    other = shapes.make_small_picture(0, 1)
    assert other.image.shape != first.image.shape or not np.array_equal(other.image, first.image)


def test_small_task_is_written_as_jpeg_coco(tmp_path):
    result = CliRunner().invoke(app, ["data", "shapes", str(tmp_path / "s"), "--task", "small",
                                      "--train", "0", "--val", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    coco = json.loads((tmp_path / "s" / "annotations" / "instances_val2017.json").read_text())
    image = coco["images"][0]
    picture = shapes.make_small_picture(shapes.VAL_SEED, 0)
    assert image["file_name"] == "000000.jpg"
    assert (image["height"], image["width"]) == picture.image.shape[:2]
    assert len(coco["annotations"]) == len(picture.boxes)
    with Image.open(tmp_path / "s" / "val2017" / "000000.jpg") as stored:
        assert stored.format == "JPEG" and stored.size == (image["width"], image["height"])
