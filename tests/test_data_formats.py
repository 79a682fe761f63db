"""Your own data: COCO (standard and Roboflow), YOLO and Pascal VOC folders, written from the
shapes generator; format detection, class indices, the checker's messages, convert to COCO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from ddetr_cli.cli.data import data_app
from ddetr_cli.data import build_datasets, shapes
from ddetr_cli.data.check import check_data
from ddetr_cli.data.formats import detect_format
from ddetr_cli.data.sources import data_classes, load_source
from ddetr_cli.errors import DdetrError
from ddetr_cli.recipe import load_recipe

NAMES = list(shapes.CLASS_NAMES)
SEEDS = {"train": 0, "val": shapes.VAL_SEED}


def _pictures(split: str, count: int):
    return [shapes.make_picture(SEEDS[split], i) for i in range(count)]


def write_yolo(root: Path, counts=(("train", 3), ("val", 2)), names=None) -> Path:
    for split, count in counts:
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i, p in enumerate(_pictures(split, count)):
            Image.fromarray(p.image).save(root / "images" / split / f"{i:03d}.png")
            lines = []
            for (x0, y0, x1, y1), label in zip(p.boxes, p.labels, strict=True):
                cx, cy, w, h = (x0 + x1) / 256, (y0 + y1) / 256, (x1 - x0) / 128, (y1 - y0) / 128
                lines.append(f"{label} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    names = NAMES if names is None else names
    spec = {"train": "images/train", "val": "images/val", "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root


def _voc_xml(filename: str, objects) -> str:
    parts = [f"<annotation><filename>{filename}</filename>",
             "<size><width>128</width><height>128</height><depth>3</depth></size>"]  # fmt: skip
    for name, (x0, y0, x1, y1), difficult in objects:
        # VOC is 1-based and inclusive: pixels x0..x1-1 are xmin=x0+1, xmax=x1.
        parts.append(
            f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox>"
            f"<xmin>{x0 + 1:g}</xmin><ymin>{y0 + 1:g}</ymin><xmax>{x1:g}</xmax>"
            f"<ymax>{y1:g}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def write_voc(root: Path, counts=(("train", 3), ("val", 2))) -> Path:
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for split, count in counts:
        ids = []
        for i, p in enumerate(_pictures(split, count)):
            stem = f"{split}_{i:03d}"
            ids.append(stem)
            Image.fromarray(p.image).save(root / "JPEGImages" / f"{stem}.png")
            objects = [(NAMES[label], box, False)
                       for box, label in zip(p.boxes, p.labels, strict=True)]  # fmt: skip
            if i == 0:
                objects.append(("triangle", np.array([1, 1, 11, 11]), True))  # difficult
            (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(f"{stem}.png", objects))
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_roboflow(root: Path) -> Path:
    for split, folder in (("train", "train"), ("val", "valid")):
        (root / folder).mkdir(parents=True)
        data = shapes.coco_dict(SEEDS[split], 2)
        for i, p in enumerate(_pictures(split, 2)):
            Image.fromarray(p.image).save(root / folder / f"{i:06d}.png")
        for ann in data["annotations"]:
            ann["category_id"] += 1
        data["categories"] = [{"id": 0, "name": "shapes-xyz", "supercategory": "none"}] + [
            {"id": i + 1, "name": n, "supercategory": "shapes-xyz"} for i, n in enumerate(NAMES)
        ]
        (root / folder / "_annotations.coco.json").write_text(json.dumps(data))
    return root


def write_coco(root: Path) -> Path:
    from ddetr_cli.data.convert import write_shapes_coco

    write_shapes_coco(root, 3, 2)
    return root


def _recipe(root: Path, *overrides: str) -> dict:
    return load_recipe(None, [f"data.root={root}", *overrides])


def _boxes_of(dataset, index: int) -> torch.Tensor:
    return dataset.targets[dataset.ids[index]][0]


def test_formats_are_detected(tmp_path):
    assert detect_format(write_yolo(tmp_path / "y")) == "yolo"
    assert detect_format(write_voc(tmp_path / "v")) == "voc"
    assert detect_format(write_coco(tmp_path / "c")) == "coco"
    assert detect_format(write_roboflow(tmp_path / "r")) == "coco"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DdetrError, match="unknown layout"):
        detect_format(tmp_path / "empty")


@pytest.mark.parametrize("writer", [write_yolo, write_voc, write_coco])
def test_every_format_reads_the_same_boxes(tmp_path, writer):
    splits = build_datasets(_recipe(writer(tmp_path / "d")))
    assert splits.num_classes == 3 and splits.class_names == NAMES
    assert len(splits.train) == 3 and len(splits.val) == 2
    for i, picture in enumerate(_pictures("train", 3)):
        boxes, labels = splits.train.targets[splits.train.ids[i]]
        assert torch.allclose(boxes, torch.from_numpy(picture.boxes), atol=1e-3)
        assert labels.tolist() == picture.labels.tolist()
    image, target = splits.val[0]
    assert image.shape[-2:] == (800, 800)
    assert target["labels"].tolist() == _pictures("val", 1)[0].labels.tolist()


def test_yolo_names_mapping_list_file_and_missing_labels(tmp_path):
    root = write_yolo(tmp_path / "y", names={0: "circle", 1: "rectangle", 2: "triangle"})
    (root / "labels" / "train" / "001.txt").unlink()  # a picture without labels: no boxes
    listing = root / "train.txt"
    listing.write_text("./images/train/000.png\n./images/train/001.png\n")
    spec = yaml.safe_load((root / "data.yaml").read_text())
    (root / "data.yaml").write_text(yaml.safe_dump({**spec, "train": "train.txt", "path": "."}))
    source = load_source(_recipe(root)["data"])
    assert source.format == "yolo" and source.class_names == NAMES
    train = source.splits["train"].coco
    assert len(train["images"]) == 2
    assert {a["image_id"] for a in train["annotations"]} == {1}


def test_voc_difficult_boxes_are_crowd_and_names_sorted(tmp_path):
    root = write_voc(tmp_path / "v")
    splits = build_datasets(_recipe(root))
    crowd = [a for a in splits.val.coco_ground_truth().dataset["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["bbox"] == [1.0, 1.0, 10.0, 10.0]
    assert len(_boxes_of(splits.train, 0)) == len(_pictures("train", 1)[0].boxes)  # dropped
    assert splits.class_names == ["circle", "rectangle", "triangle"]  # sorted names


def test_class_names_in_the_recipe_decide_the_indices(tmp_path):
    order = "model.class_names=[triangle, circle, rectangle]"
    for root in (write_voc(tmp_path / "v"), write_coco(tmp_path / "c")):
        recipe = _recipe(root, "model.num_classes=3", order)
        splits = build_datasets(recipe)
        labels = splits.train.targets[splits.train.ids[0]][1]
        expected = [[1, 2, 0][c] for c in _pictures("train", 1)[0].labels]
        assert labels.tolist() == expected, root
        assert data_classes(recipe) == (3, ["triangle", "circle", "rectangle"])


def test_roboflow_drops_its_supercategory(tmp_path):
    recipe = _recipe(write_roboflow(tmp_path / "r"))
    source = load_source(recipe["data"])
    assert source.flavour == "Roboflow" and set(source.splits) == {"train", "val"}
    assert "dropped category 0 'shapes-xyz'" in source.notes[0]
    assert source.class_names == ["N/A", *NAMES]  # COCO category ids as they are
    assert data_classes(recipe) == (4, ["N/A", *NAMES])


def test_data_classes(tmp_path):
    assert data_classes(_recipe(write_yolo(tmp_path / "y"))) == (3, NAMES)
    six = load_recipe(None, ["data.format=shapes", "data.shapes.task=shapes6"])
    assert data_classes(six)[0] == 6


def test_evaluation_of_converted_ground_truth(tmp_path):
    """A YOLO val split converted to COCO holds every picture and box, and pycocotools scores
    the ground truth against itself as perfect."""
    from ddetr_cli.data.coco import coco_object
    from ddetr_cli.evaluation.coco import coco_evaluation

    splits = build_datasets(_recipe(write_yolo(tmp_path / "y")), train=False)
    gt = splits.val.coco_ground_truth()
    boxes = sum(len(p.boxes) for p in _pictures("val", 2))
    rebuilt = coco_object(gt.dataset, "x")
    assert len(rebuilt.getImgIds()) == 2 and len(rebuilt.getAnnIds()) == boxes
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in gt.dataset["annotations"]]  # fmt: skip
    stats, per_class = coco_evaluation(gt, dets)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    seen = {int(label) for p in _pictures("val", 2) for label in p.labels}
    assert {c for c, ap in per_class.items() if ap is not None} == seen
    assert all(per_class[c] == pytest.approx(1.0) for c in seen)


# --- the checker: one test per kind of problem ---------------------------------------------


def _check(root: Path, *overrides: str):
    return check_data(_recipe(root, *overrides))


def test_clean_data_checks_ok_with_counts(tmp_path):
    report = _check(write_yolo(tmp_path / "y"))
    assert report.ok and report.format == "yolo"
    train = report.splits[0]
    boxes = sum(len(p.boxes) for p in _pictures("train", 3))
    assert train.pictures == 3 and train.boxes == boxes
    assert sum(train.sizes.values()) == boxes and sum(train.per_class.values()) == boxes


def test_check_missing_picture(tmp_path):
    root = write_coco(tmp_path / "c")
    (root / "train2017" / "000001.png").unlink()
    [problem] = _check(root).problems
    assert problem.file.endswith("000001.png") and problem.message == "missing picture"


def test_check_undecodable_picture(tmp_path):
    root = write_voc(tmp_path / "v")
    (root / "JPEGImages" / "train_001.png").write_bytes(b"not a png")
    [problem] = _check(root).problems
    assert problem.file.endswith("train_001.png") and "picture" in problem.message


def test_check_label_file_without_picture(tmp_path):
    root = write_yolo(tmp_path / "y")
    (root / "labels" / "train" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    [problem] = _check(root).problems
    assert problem.file.endswith("orphan.txt") and problem.message == "label file without a picture"


def test_check_unparsable_line(tmp_path):
    root = write_yolo(tmp_path / "y")
    with (root / "labels" / "train" / "000.txt").open("a") as fh:
        fh.write("1 0.5 0.5\n")
    [problem] = _check(root).problems
    assert problem.file.endswith("000.txt:" + str(len(_pictures("train", 1)[0].boxes) + 1))
    assert "unparsable line" in problem.message


def test_check_class_out_of_range(tmp_path):
    root = write_yolo(tmp_path / "y")
    with (root / "labels" / "val" / "001.txt").open("a") as fh:
        fh.write("7 0.5 0.5 0.1 0.1\n")
    [problem] = _check(root).problems
    assert "001.txt:" in problem.file and problem.message == "class 7 out of range (0..2)"


def test_check_zero_size_and_outside_boxes(tmp_path):
    root = write_yolo(tmp_path / "y")
    with (root / "labels" / "train" / "002.txt").open("a") as fh:
        fh.write("0 0.5 0.5 0 0.1\n0 0.95 0.5 0.3 0.1\n")
    zero, outside = _check(root).problems
    assert zero.message.startswith("box of zero size")
    assert outside.message.startswith("box outside the picture")


def test_check_duplicate_file_names(tmp_path):
    root = write_coco(tmp_path / "c")
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["images"][1]["file_name"] = data["images"][0]["file_name"]
    path.write_text(json.dumps(data))
    [problem] = _check(root).problems
    assert problem.file.endswith("000000.png") and "duplicate file name" in problem.message


def test_check_cli_exit_status_and_json(tmp_path):
    root = write_voc(tmp_path / "v")
    runner = CliRunner()
    result = runner.invoke(data_app, ["check", str(root), "--json", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    assert "format: voc" in result.output and "train: 3 pictures" in result.output
    assert json.loads((tmp_path / "c.json").read_text())["ok"] is True
    (root / "JPEGImages" / "val_000.png").unlink()
    result = runner.invoke(data_app, ["check", str(root)])
    assert result.exit_code == 1 and "label file without a picture" in result.output


def test_convert_to_coco_round_trip(tmp_path):
    root = write_yolo(tmp_path / "y")
    out = tmp_path / "coco"
    result = CliRunner().invoke(data_app, ["convert", str(root), str(out), "--to", "coco"])
    assert result.exit_code == 0, result.output
    assert detect_format(out) == "coco"
    before = build_datasets(_recipe(root))
    after = build_datasets(_recipe(out))
    assert after.class_names == before.class_names
    for a, b in ((before.train, after.train), (before.val, after.val)):
        assert len(a) == len(b)
        for i in range(len(a)):
            assert torch.allclose(_boxes_of(a, i), _boxes_of(b, i))
            assert torch.equal(a.targets[a.ids[i]][1], b.targets[b.ids[i]][1])  # labels
    result = CliRunner().invoke(data_app, ["convert", str(root), str(out)])
    assert result.exit_code == 1  # not empty


def test_check_category_not_in_class_names(tmp_path):
    root = write_coco(tmp_path / "c")
    problems = _check(root, "model.num_classes=2", "model.class_names=[circle, rectangle]").problems
    assert any(p.message == "category 'triangle' is not in model.class_names" for p in problems)
    assert any(p.message == "class 'triangle' is not in the class list" for p in problems)


def test_transfer_recipes_load():
    root = Path(__file__).resolve().parents[1] / "recipes"
    transfer = load_recipe(root / "shapes_transfer.yaml")
    assert transfer["data"]["shapes"]["task"] == "shapes6" and transfer["model"]["num_classes"] == 6
    finetune = load_recipe(root / "finetune.yaml", ["data.root=/data/mine"])
    assert finetune["data"]["format"] == "auto" and finetune["train"]["lr"] == 1e-4
