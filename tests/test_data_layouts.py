"""Data sets as people download them (#18.4, #24.1, #24.7): each layout found by
``data.format: auto`` and read with the right picture and box counts per split, from an
absolute data.root, a relative one, and from inside the folder (``cd ds && ddetr data check .``)."""

from __future__ import annotations

import json

import pytest
from fake_datasets import (
    COUNTS,
    NAMES,
    box_count,
    cvat_yolo,
    mmdet_coco,
    roboflow_coco,
    roboflow_voc,
    roboflow_yolo,
    ultralytics_yolo,
)
from typer.testing import CliRunner

from ddetr_cli.cli.data import data_app
from ddetr_cli.data import build_datasets
from ddetr_cli.data.check import check_data
from ddetr_cli.data.convert import write_shapes_coco
from ddetr_cli.data.formats import detect_format
from ddetr_cli.errors import DdetrError
from ddetr_cli.recipe import load_recipe

ALL, TRAIN_VAL = ("train", "val", "test"), ("train", "val")
# name: (writer, the format data check reports, the splits written, the class names)
LAYOUTS = {
    "roboflow yolo": (roboflow_yolo, "yolo", ALL, NAMES),
    "roboflow coco valid/": (roboflow_coco, "coco (Roboflow)", ALL, ["N/A", *NAMES]),
    "roboflow coco val/": (
        lambda r: roboflow_coco(r, "val"),
        "coco (Roboflow)",
        ALL,
        ["N/A", *NAMES],
    ),  # fmt: skip
    "roboflow voc": (roboflow_voc, "voc (Roboflow)", ALL, NAMES),
    "cvat yolo 1.1": (cvat_yolo, "yolo (CVAT YOLO 1.1)", TRAIN_VAL, NAMES),
    "mmdet train/": (mmdet_coco, "coco", TRAIN_VAL, NAMES),
    "mmdet images/train/": (
        lambda r: mmdet_coco(r, "images/{split}"),
        "coco",
        TRAIN_VAL,
        NAMES,
    ),  # fmt: skip
    "yolo path: .": (lambda r: ultralytics_yolo(r, "."), "yolo", TRAIN_VAL, NAMES),
    "yolo without path:": (ultralytics_yolo, "yolo", TRAIN_VAL, NAMES),
}


def _expected(splits) -> dict[str, tuple[int, int]]:
    return {split: (COUNTS[split], box_count(split)) for split in splits}


@pytest.mark.parametrize("where", ["absolute", "relative", "inside"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_is_found_with_the_right_counts(tmp_path, monkeypatch, layout, where):
    writer, fmt, splits, names = LAYOUTS[layout]
    root = writer(tmp_path / "ds")
    (tmp_path / "elsewhere").mkdir()
    cwd, arg = {"absolute": (tmp_path / "elsewhere", str(root)), "relative": (tmp_path, "ds"),
                "inside": (root, ".")}[where]  # fmt: skip
    monkeypatch.chdir(cwd)
    recipe = load_recipe(None, [f"data.root={arg}"])
    report = check_data(recipe)
    assert report.ok, report.lines()
    assert (report.format, report.root, report.class_names) == (fmt, str(root), names)
    assert {s.name: (s.pictures, s.boxes) for s in report.splits} == _expected(splits)
    assert not any("/.." in line or "ds/ds" in line for line in report.lines())
    # What training reads (its data summary), and evaluation (the val split alone).
    datasets = build_datasets(recipe)
    for split, dataset in (("train", datasets.train), ("val", datasets.val)):
        boxes = sum(len(dataset.targets[i][0]) for i in dataset.ids)
        assert (len(dataset), boxes) == _expected([split])[split]
    assert len(build_datasets(recipe, train=False).val) == COUNTS["val"]


def test_roboflow_yolo_split_paths_as_ultralytics_reads_them(tmp_path):
    """``../train/images`` that exists outside the data set is taken as it is; only where it
    does not exist is the ``../`` dropped."""
    root = roboflow_yolo(tmp_path / "ds")
    (tmp_path / "valid" / "images").mkdir(parents=True)  # a literal ../valid/images, empty
    report = check_data(load_recipe(None, [f"data.root={root}"]))
    assert {s.name: s.pictures for s in report.splits} == {"train": 3, "val": 0, "test": 1}
    (root / "data.yaml").write_text("train: ../nowhere/images\nnames: [a]\n")
    with pytest.raises(DdetrError) as error:
        check_data(load_recipe(None, [f"data.root={root}"]))
    looked = f"looked for {tmp_path}/nowhere/images and {root}/nowhere/images"
    assert looked in str(error.value)


def test_cvat_yolo_without_pictures_names_each_missing_picture(tmp_path):
    root = cvat_yolo(tmp_path / "ds")
    for picture in root.glob("obj_*_data/*.jpg"):
        picture.unlink()  # exported without "save images"
    report = check_data(load_recipe(None, [f"data.root={root}"]))
    missing = [p.file for p in report.problems if p.message == "missing picture"]
    assert len(missing) == COUNTS["train"] + COUNTS["val"] == len(report.problems)
    assert missing[0] == str(root / "obj_train_data" / "frame_000000.jpg")


def test_mmdet_file_names_that_include_their_folder(tmp_path):
    root = mmdet_coco(tmp_path / "ds")
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        for image in data["images"]:
            image["file_name"] = f"{split}/{image['file_name']}"
        path.write_text(json.dumps(data))
    report = check_data(load_recipe(None, [f"data.root={root}"]))
    assert report.ok, report.lines()
    assert {s.name: s.pictures for s in report.splits} == {"train": 3, "val": 2}


def test_the_standard_coco_layout_still_wins(tmp_path):
    write_shapes_coco(tmp_path / "ds", 3, 2)
    (tmp_path / "ds" / "annotations" / "instances_train.json").write_text("not read")
    report = check_data(load_recipe(None, [f"data.root={tmp_path / 'ds'}"]))
    assert report.ok and {s.name: s.pictures for s in report.splits} == {"train": 3, "val": 2}


def test_an_unknown_layout_is_one_line_naming_what_was_looked_for(tmp_path):
    (tmp_path / "ds" / "pictures").mkdir(parents=True)
    with pytest.raises(DdetrError) as error:
        detect_format(tmp_path / "ds")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"data.root {tmp_path / 'ds'}: unknown")
    for looked_for in ("data.yaml", "obj.data", "JPEGImages/", "annotations/",
                       "_annotations.coco.json", "*.xml", "valid"):  # fmt: skip
        assert looked_for in message


def test_a_data_set_without_val_says_so_and_still_trains(tmp_path):
    root = ultralytics_yolo(tmp_path / "ds")
    (root / "data.yaml").write_text(f"train: images/train\nnames: {NAMES}\n")
    recipe = load_recipe(None, [f"data.root={root}"])
    report = check_data(recipe)
    assert report.ok and [s.name for s in report.splits] == ["train"]
    assert report.notes == [
        "no val split: training would run without validation (no val AP, no checkpoint_best.pth)"
    ]
    datasets = build_datasets(recipe)
    assert len(datasets.train) == COUNTS["train"] and datasets.val is None


def test_check_on_the_quickstarts_val_only_folder(tmp_path, monkeypatch):
    """`ddetr data shapes X --train 0 --val 8` then `ddetr data check X`: the val split is
    checked; no train split is a note, not a failure."""
    write_shapes_coco(tmp_path / "X", 0, 8)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(data_app, ["check", "X"])
    assert result.exit_code == 0, result.output
    assert "val: 8 pictures" in result.output
    assert "note: no train split: this data can be evaluated on, not trained on" in result.output
    with pytest.raises(DdetrError, match=r"no training split in .*X \(coco; found: val\)"):
        build_datasets(load_recipe(None, ["data.root=X"]))


@pytest.mark.slow
def test_training_without_val_says_so_in_its_data_line(tmp_path, monkeypatch):
    from ddetr_cli.cli import app

    root = ultralytics_yolo(tmp_path / "ds")
    (root / "data.yaml").write_text(f"train: images/train\nnames: {NAMES}\n")
    monkeypatch.chdir(tmp_path)
    tiny = [
        "model.hidden_dim=32", "model.nheads=4", "model.enc_layers=1", "model.dec_layers=1",
        "model.dim_feedforward=64", "model.num_queries=6", "model.num_feature_levels=1",
        "model.attention_backend=reference", "train.epochs=1", "train.batch_size=3",
    ]  # fmt: skip
    args = ["train", "shapes", *tiny, "data.format=auto", "data.root=ds", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        f"data: train 3 pictures, {box_count('train')} boxes; no val split (no val AP, no "
        "checkpoint_best.pth); 3 classes" in result.output
    )


@pytest.mark.parametrize("layout", [*LAYOUTS, "shapes"])
def test_every_reader_gives_evaluation_one_dataset_interface(tmp_path, layout):
    """#20: image ids, the ground truth as one method and the box count, whatever the format
    (COCO, Roboflow, YOLO, darknet, VOC, the built-in shapes)."""
    if layout == "shapes":
        recipe = load_recipe(None, ["data.format=shapes", "data.shapes.val_images=4"])
    else:
        recipe = load_recipe(None, [f"data.root={LAYOUTS[layout][0](tmp_path / 'ds')}"])
    val = build_datasets(recipe, train=False).val
    truth = val.coco_ground_truth()
    assert val.coco_ground_truth() is truth  # built once
    assert val.image_ids() == [val.image_id(i) for i in range(len(val))]
    assert sorted(val.image_ids()) == sorted(truth.getImgIds())
    boxes = len(truth.getAnnIds())
    assert val.box_count() == boxes
    if layout != "shapes":
        assert boxes == box_count("val")
