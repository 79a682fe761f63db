"""COCO-format data: target preparation, bad inputs, the paper's augmentation, batching.

Bad inputs are handled as documented in ddetr_cli/data/coco.py: malformed, zero or negative
size boxes and unknown categories are skipped up front with one warning; in training, images
whose file is missing are skipped up front and a picture that cannot be decoded is replaced by
the next one and reported, so an epoch never crashes; evaluation marks both unreadable.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ddetr_cli.data import (
    CocoDataset,
    ResumableBatchSampler,
    ShapesDataset,
    build_datasets,
    collate,
)
from ddetr_cli.data.transforms import train_transform, wrap
from ddetr_cli.errors import DdetrError
from ddetr_cli.recipe import load_recipe


def _folder(tmp_path, annotations, images=(("a.png", 40, 60), ("b.png", 50, 30))):
    folder = tmp_path / "images"
    folder.mkdir(parents=True)
    entries = []
    for i, (name, h, w) in enumerate(images, start=1):
        Image.fromarray(np.full((h, w, 3), 100 + i, np.uint8)).save(folder / name)
        entries.append({"id": i, "file_name": name, "height": h, "width": w})
    data = {"images": entries, "annotations": annotations,
            "categories": [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}]}  # fmt: skip
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return folder, path


def _ann(i, image_id, bbox, cat=1, crowd=0):
    return {"id": i, "image_id": image_id, "bbox": bbox, "category_id": cat, "iscrowd": crowd,
            "area": 1.0}  # fmt: skip


def test_targets_are_prepared_like_the_official(tmp_path, caplog):
    anns = [
        _ann(1, 1, [10, 5, 20, 10]),
        _ann(2, 1, [50, 30, 40, 40], cat=7),  # runs off the right/bottom edge: clamped
        _ann(3, 1, [0, 0, 5, 5], crowd=1),  # crowd: dropped
        _ann(4, 2, [1, 1, 0, 5]),  # zero width: skipped
        _ann(5, 2, [1, 1, -3, 5]),  # negative: skipped
        _ann(6, 2, [1, 1, 4, 4], cat=3),  # unknown category: skipped
        _ann(7, 2, [1, 1, 4]),  # malformed
    ]
    folder, path = _folder(tmp_path, anns)
    with caplog.at_level(logging.WARNING):
        ds = CocoDataset(folder, path, train=False, min_size=40, max_size=1333)
    assert ds.skipped_annotations == 4
    assert "skipped 4 annotations" in caplog.text
    assert ds.max_category == 7
    image, target = ds[0]
    assert image.shape == (3, 40, 60)
    assert target["labels"].tolist() == [1, 7]
    # Normalised cxcywh; the second box clamped to the 60x40 picture: x 50..60, y 30..40.
    expected = torch.tensor([[20 / 60, 10 / 40, 20 / 60, 10 / 40], [55 / 60, 35 / 40, 10 / 60,
                             10 / 40]])  # fmt: skip
    assert torch.allclose(target["boxes"], expected)
    assert target["orig_size"].tolist() == [40, 60]
    _, second = ds[1]
    assert second["labels"].numel() == 0


def test_missing_and_corrupt_pictures(tmp_path, caplog):
    anns = [_ann(1, 1, [1, 1, 5, 5]), _ann(2, 2, [1, 1, 5, 5])]
    folder, path = _folder(tmp_path, anns, images=(("a.png", 20, 20), ("b.png", 20, 20),
                                                   ("gone.png", 20, 20)))  # fmt: skip
    (folder / "gone.png").unlink()
    (folder / "a.png").write_bytes(b"not a picture")
    with caplog.at_level(logging.WARNING):
        ds = CocoDataset(folder, path, train=True, augment="flip")
    assert ds.missing_images == 1 and len(ds) == 2
    assert "missing" in caplog.text
    image, target = ds[0]  # a.png is corrupt: b.png comes instead, and the failure is reported
    assert target["image_id"] == 2 and len(target["failures"]) == 1
    assert "a.png" in target["failures"][0]


def test_evaluation_never_replaces_a_picture(tmp_path):
    """train=False: an undecodable or missing picture is kept under its own id, marked
    unreadable, never replaced by its neighbour."""
    anns = [_ann(1, 1, [1, 1, 5, 5]), _ann(2, 2, [1, 1, 5, 5]), _ann(3, 3, [2, 2, 5, 5])]
    folder, path = _folder(tmp_path, anns, images=(("a.png", 20, 20), ("b.png", 20, 20),
                                                   ("gone.png", 20, 20)))  # fmt: skip
    (folder / "gone.png").unlink()
    (folder / "a.png").write_bytes(b"not a picture")
    ds = CocoDataset(folder, path, train=False)
    assert len(ds) == 3 and ds.missing_images == 1
    image, target = ds[0]
    assert image is None and target["image_id"] == 1
    assert target["unreadable"] == f"{folder / 'a.png'}: not a picture Pillow can read"
    image, target = ds[1]
    assert image.shape[0] == 3 and target["image_id"] == 2 and "unreadable" not in target
    image, target = ds[2]
    assert image is None and target == {
        "image_id": 3,
        "unreadable": f"{folder / 'gone.png'}: no such file",
    }
    images, targets = collate([ds[0], ds[1]])
    assert images[0] is None and [t["image_id"] for t in targets] == [1, 2]


def test_unreadable_annotations_are_one_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DdetrError, match="not a JSON annotations file"):
        CocoDataset(tmp_path / "images", bad, train=False)
    with pytest.raises(DdetrError, match="annotations file not found"):
        CocoDataset(tmp_path / "images", tmp_path / "nope.json", train=False)


def test_data_root_layout_and_class_count(tmp_path):
    root = tmp_path / "coco"
    for split in ("train", "val"):
        folder, path = _folder(tmp_path / split, [_ann(1, 1, [1, 1, 5, 5], cat=7)])
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        folder.rename(root / f"{split}2017")
        path.rename(root / "annotations" / f"instances_{split}2017.json")
    recipe = load_recipe(None, [f"data.root={root}"])
    splits = build_datasets(recipe)
    assert len(splits.train) == 2 and len(splits.val) == 2
    assert splits.num_classes == 8 and splits.class_names[7] == "dog"
    assert splits.class_names[0] == "N/A"


def test_paper_augmentation_sizes_and_boxes():
    ds = ShapesDataset(0, 4, train=True, augment="paper")
    for epoch in range(3):
        image, target = ds[(epoch, 1)]
        short, long = sorted(image.shape[-2:])
        assert 384 <= short <= 800 and long <= 1333
        boxes = target["boxes"]
        assert torch.all(boxes[:, 2:] > 0) and torch.all(boxes >= 0) and torch.all(boxes <= 1)
    # The same (epoch, index) gives the same sample; the global RNG is untouched.
    state = torch.get_rng_state()
    a, b = ds[(5, 2)], ds[(5, 2)]
    assert torch.equal(a[0], b[0]) and torch.equal(torch.get_rng_state(), state)


def test_flip_moves_boxes():
    image = torch.zeros(3, 10, 20, dtype=torch.uint8)
    img, boxes = wrap(image, torch.tensor([[0.0, 0.0, 5.0, 10.0]]))
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        _, out = train_transform("flip")(img, boxes)
        seen.add(tuple(out[0].tolist()))
    assert seen == {(0.0, 0.0, 5.0, 10.0), (15.0, 0.0, 20.0, 10.0)}


def test_loader_batches_and_resumes_mid_epoch():
    ds = ShapesDataset(0, 10, train=True)
    sampler = ResumableBatchSampler(ds, batch_size=3, seed=1)
    sampler.set_epoch(2)
    full = [b for b in sampler]
    assert len(full) == 3  # drop_last
    sampler.set_epoch(2, start=1)
    assert [b for b in sampler] == full[1:]
    images, targets = next(iter(DataLoader(ds, batch_sampler=sampler, collate_fn=collate)))
    assert len(images) == 3 and images[0].shape == (3, 128, 128) and "boxes" in targets[0]


def test_explicit_paths_work_with_format_auto(tmp_path):
    folder, path = _folder(tmp_path / "x", [_ann(1, 1, [1, 1, 5, 5], cat=7)])
    recipe = load_recipe(None, [f"data.train.images={folder}", f"data.train.annotations={path}"])
    assert recipe["data"]["format"] == "auto"
    splits = build_datasets(recipe)
    assert len(splits.train) == 2 and splits.val is None and splits.num_classes == 8
    with pytest.raises(DdetrError, match="no data: set data.root"):
        build_datasets(load_recipe(None, []))
    with pytest.raises(DdetrError, match="data.format yolo needs data.root"):
        build_datasets(load_recipe(None, ["data.format=yolo"]))
