"""The built-in shapes data: deterministic, within the task's fixed rules, exportable as COCO."""

from __future__ import annotations

import json

import numpy as np
import torch
from typer.testing import CliRunner

from ddetr_cli.cli.data import data_app
from ddetr_cli.data import CocoDataset, ShapesDataset, shapes


def test_pictures_are_deterministic_per_seed_and_index():
    a, b = shapes.make_picture(3, 7), shapes.make_picture(3, 7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    c = shapes.make_picture(4, 7)
    assert not np.array_equal(a.image, c.image)


def test_pictures_follow_the_task_rules():
    for i in range(60):
        p = shapes.make_picture(0, i)
        assert p.image.shape == (128, 128, 3) and p.image.dtype == np.uint8
        assert 1 <= len(p.boxes) <= 5
        sides = np.concatenate([p.boxes[:, 2] - p.boxes[:, 0], p.boxes[:, 3] - p.boxes[:, 1]])
        assert sides.min() >= 12 and sides.max() <= 60
        assert p.boxes.min() >= 0 and p.boxes.max() <= 128
        assert set(p.labels.tolist()) <= {0, 1, 2}
        for j in range(len(p.boxes)):
            for k in range(j):
                a, b = p.boxes[j], p.boxes[k]
                w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
                h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
                smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
                assert w * h <= 0.3 * smaller + 1e-6


def test_val_split_has_its_own_seed():
    val = ShapesDataset(shapes.VAL_SEED, 200, train=False)
    assert len(val) == 200
    coco = val.coco_ground_truth()
    assert len(coco.getImgIds()) == 200 and coco.getCatIds() == [0, 1, 2]
    image, target = val[0]
    assert image.shape == (3, 128, 128)
    assert torch.all((target["boxes"] > 0) & (target["boxes"] <= 1))


def test_cli_writes_a_coco_folder_that_reads_back_the_same(tmp_path):
    result = CliRunner().invoke(data_app, ["shapes", str(tmp_path), "--train", "3", "--val", "2"])
    assert result.exit_code == 0, result.output
    ann = json.loads((tmp_path / "annotations" / "instances_val2017.json").read_text())
    assert len(ann["images"]) == 2 and ann["categories"][2]["name"] == "triangle"
    from_files = CocoDataset(tmp_path / "train2017",
                             tmp_path / "annotations" / "instances_train2017.json", train=False,
                             min_size=128, max_size=128)  # fmt: skip
    built_in = ShapesDataset(0, 3, train=False)
    for i in range(3):
        img_a, tgt_a = from_files[i]
        img_b, tgt_b = built_in[i]
        assert torch.equal(img_a, img_b)
        assert torch.allclose(tgt_a["boxes"], tgt_b["boxes"])
        assert torch.equal(tgt_a["labels"], tgt_b["labels"])


def test_shapes_refuses_an_earlier_set_unless_forced(tmp_path):
    runner = CliRunner()
    result = runner.invoke(data_app, ["shapes", str(tmp_path), "--train", "4", "--val", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(data_app, ["shapes", str(tmp_path), "--train", "2", "--val", "1"])
    assert result.exit_code == 1 and "--force" in result.output
    assert len(list((tmp_path / "train2017").iterdir())) == 4  # untouched
    result = runner.invoke(
        data_app, ["shapes", str(tmp_path), "--train", "2", "--val", "1", "--force"]
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "train2017").iterdir())) == 2  # the old pictures are gone
    ann = json.loads((tmp_path / "annotations" / "instances_train2017.json").read_text())
    assert len(ann["images"]) == 2


def test_shapes6_keeps_shapes3_pictures_and_adds_classes():
    three = shapes.make_picture(0, 5)
    assert np.array_equal(three.image, shapes.make_picture(0, 5, "shapes3").image)
    labels = np.concatenate([shapes.make_picture(0, i, "shapes6").labels for i in range(60)])
    assert set(labels.tolist()) == set(range(6))
    for i in range(20):
        p = shapes.make_picture(1, i, "shapes6")
        assert p.boxes.min() >= 0 and p.boxes.max() <= 128
    val = ShapesDataset(shapes.VAL_SEED, 5, train=False, task="shapes6")
    assert val.coco_ground_truth().getCatIds() == list(range(6))
