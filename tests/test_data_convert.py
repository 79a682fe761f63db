"""``ddetr data convert --to coco`` says what it wrote of what it read (#24.1, #24.2): a
conversion that writes fewer pictures or boxes than it read exits 1; one that writes nothing
never exits 0; a relative source gives the counts of the absolute one."""

from __future__ import annotations

from fake_datasets import COUNTS, box_count, pictures, ultralytics_yolo
from typer.testing import CliRunner

from ddetr_cli.cli.data import data_app
from ddetr_cli.data.check import check_data
from ddetr_cli.recipe import load_recipe

runner = CliRunner()
TRAIN, VAL = (COUNTS["train"], box_count("train")), (COUNTS["val"], box_count("val"))


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_a_relative_yolo_folder_converts_whole(tmp_path, monkeypatch):
    ultralytics_yolo(tmp_path / "yolo_shapes", path_line=".")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(data_app, ["convert", "yolo_shapes", "yolo_as_coco", "--to", "coco"])
    assert result.exit_code == 0, result.output
    assert f"train: 3 of 3 pictures, {TRAIN[1]} of {TRAIN[1]} boxes -> yolo_as_coco" in (
        result.output
    )
    report = check_data(load_recipe(None, ["data.root=yolo_as_coco"]))
    assert report.ok and {s.name: (s.pictures, s.boxes) for s in report.splits} == {
        "train": TRAIN, "val": VAL,
    }  # fmt: skip


def test_a_conversion_that_drops_pictures_or_boxes_exits_1(tmp_path):
    root = ultralytics_yolo(tmp_path / "yolo")
    (root / "images" / "val" / "001.png").unlink()
    with (root / "labels" / "train" / "000.txt").open("a") as labels:
        labels.write("7 0.5 0.5 0.1 0.1\n")  # class 7 of 3: read, not written
    result = runner.invoke(data_app, ["convert", str(root), str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    orphan = root / "labels" / "val" / "001.txt"
    assert f"skipped: {orphan}: label file without a picture" in result.output
    # The missing picture's boxes are never read (its size is unknown); the class 7 box is.
    boxes = TRAIN[1] + VAL[1] - len(pictures("val")[1].boxes)
    assert _errors(result.output) == [
        f"error: wrote 4 of 5 pictures and {boxes} of {boxes + 1} boxes; 1 skipped (listed "
        "above): the conversion is incomplete"
    ]


def test_a_conversion_that_writes_nothing_never_exits_0(tmp_path):
    root = ultralytics_yolo(tmp_path / "yolo")
    for picture in (root / "images").rglob("*.png"):
        picture.unlink()
    result = runner.invoke(data_app, ["convert", str(root), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert _errors(result.output) == [
        "error: wrote no picture (0 of 5 pictures and 0 of 0 boxes): nothing was converted"
    ]
