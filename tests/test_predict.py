"""`ddetr predict` with a stub model: output format, pixel coordinates, thresholds, failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import ddetr_cli.inference.predict as predict_module
import ddetr_cli.weights as weights_module
from ddetr_cli.cli import app
from ddetr_cli.data.class_names import COCO_CLASS_NAMES, class_names
from ddetr_cli.data.pictures import load_image
from ddetr_cli.errors import DdetrError
from ddetr_cli.inference.predict import output_names, run_predict
from ddetr_cli.recipe import load_recipe

# Every picture gets the same three detections: normalised xyxy boxes, scaled by post_process
# to the size it is given.
BOXES = torch.tensor([[0.25, 0.2, 0.75, 0.6], [0.1, 0.1, 0.3, 0.9], [0.5, 0.5, 0.9, 0.9]])
SCORES = torch.tensor([0.9, 0.6, 0.2])
LABELS = torch.tensor([1, 2, 3])


class StubModel(torch.nn.Module):
    """Records the batches it sees; its outputs only carry the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[int, ...]]] = []

    def forward(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        assert not torch.is_grad_enabled()
        assert all(image.dtype == torch.float32 and image.dim() == 3 for image in images)
        self.batches.append([tuple(image.shape) for image in images])
        return {"pred_logits": torch.zeros(len(images), 3, 4)}

    def optimize_for_inference(self) -> StubModel:
        self.optimized = True
        return self


class Stubs:
    def __init__(self) -> None:
        self.model = StubModel()
        self.load_calls: list[dict] = []
        self.target_sizes: list[list[int]] = []
        self.num_detections: list[int] = []

    def load_model(self, weights, recipe=None, device="cpu", overrides=()):
        self.load_calls.append(
            {"weights": weights, "recipe": recipe, "device": device, "overrides": overrides}
        )
        if recipe is None:  # the checkpoint's own recipe
            recipe = load_recipe(None, ["model.num_classes=4", *overrides])
        return self.model, recipe

    def post_process(self, outputs, target_sizes, num_detections=100):
        assert len(target_sizes) == len(outputs["pred_logits"])
        self.target_sizes.extend(target_sizes.tolist())
        self.num_detections.append(num_detections)
        results = []
        for h, w in target_sizes.tolist():
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            results.append({"scores": SCORES, "labels": LABELS, "boxes": BOXES * scale})
        return results


@pytest.fixture
def stubs(monkeypatch) -> Stubs:
    s = Stubs()
    monkeypatch.setattr(weights_module, "load_model", s.load_model)  # what resolve_model calls
    monkeypatch.setattr(predict_module, "post_process", s.post_process)
    return s


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "weights.pth"
    path.write_bytes(b"stub")
    return path


def good_pictures(image_files: dict[str, Path], tmp_path: Path) -> Path:
    """A folder with only the readable pictures."""
    folder = tmp_path / "good"
    folder.mkdir()
    for name in ("rgb", "gray", "rgba", "exif_rotated"):
        shutil.copy(image_files[name], folder / image_files[name].name)
    return folder


def read_predictions(summary) -> list[dict]:
    return json.loads(summary.predictions_path.read_text())


def test_predictions_json_format_and_pixels(stubs, weights, image_files, tmp_path):
    files = [image_files["rgb"], image_files["gray"]]  # 40x30 and 25x20 (w x h)
    out = tmp_path / "out"
    summary = run_predict(
        files, weights, threshold=0.5, out_dir=out, min_size=60, max_size=200, progress=False
    )
    assert (summary.n_images, summary.n_failed, summary.n_detections) == (2, 0, 4)
    assert summary.predictions_path == out / "predictions.json"
    assert summary.seconds_per_image > 0
    predictions = read_predictions(summary)
    assert len(predictions) == 4
    first = predictions[0]
    assert list(first) == ["image_id", "file_name", "category_id", "bbox", "score"]
    assert first == {
        "image_id": 1,
        "file_name": str(files[0]),
        "category_id": 1,
        "bbox": [10.0, 6.0, 20.0, 12.0],  # [0.25, 0.2, 0.75, 0.6] of 40x30, as x, y, w, h
        "score": 0.9,
    }
    assert [p["image_id"] for p in predictions] == [1, 1, 2, 2]
    assert predictions[2]["bbox"] == [6.25, 4.0, 12.5, 8.0]  # of 25x20
    assert [p["file_name"] for p in predictions[2:]] == [str(files[1])] * 2
    # The model saw the evaluation size; post_process was given the ORIGINAL size.
    assert stubs.model.batches == [[(3, 60, 80)], [(3, 60, 75)]]
    assert stubs.target_sizes == [[30, 40], [20, 25]]
    assert stubs.num_detections == [100, 100]
    assert sorted(p.name for p in out.iterdir()) == [
        "gray_pred.png",
        "predictions.json",
        "rgb_pred.jpg",
    ]


def test_rounding(stubs, weights, image_files, tmp_path, monkeypatch):
    boxes = torch.tensor([[1.23456, 2.34567, 10.98765, 20.5]])
    scores = torch.tensor([0.123456789])

    def post_process(outputs, target_sizes, num_detections=100):
        return [{"scores": scores, "labels": torch.tensor([7]), "boxes": boxes}]

    monkeypatch.setattr(predict_module, "post_process", post_process)
    summary = run_predict(
        [image_files["rgb"]], weights, threshold=0.0, out_dir=tmp_path / "o", progress=False
    )
    (prediction,) = read_predictions(summary)
    assert prediction["bbox"] == [1.23, 2.35, 9.75, 18.15]
    assert prediction["score"] == 0.12346


@pytest.mark.parametrize(("threshold", "kept"), [(0.0, 3), (0.2, 3), (0.5, 2), (0.9, 1), (1.0, 0)])
def test_threshold(stubs, weights, image_files, tmp_path, threshold, kept):
    summary = run_predict(
        [image_files["rgb"]], weights, threshold=threshold, out_dir=tmp_path / "o", progress=False
    )
    predictions = read_predictions(summary)
    assert len(predictions) == summary.n_detections == kept
    assert all(p["score"] >= threshold for p in predictions)


def test_drawn_picture_differs_only_where_boxes_are(stubs, weights, tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (160, 120), (90, 90, 90)).save(path)
    out = tmp_path / "o"
    run_predict([path], weights, threshold=0.5, out_dir=out, progress=False)
    original = load_image(path)
    drawn = load_image(out / "plain_pred.png")
    assert drawn.shape == original.shape
    changed = (drawn != original).any(dim=0)
    # The first box is [40, 24, 120, 72]: its left and bottom edges are drawn...
    assert changed[40:70, 40].all() and changed[72, 45:115].all()
    # ...the inside away from the label is not, nor is the corner below the kept boxes.
    assert not changed[50:65, 60:110].any()
    assert not changed[100:, 130:].any()


def test_bad_files_are_reported_and_the_rest_processed(stubs, weights, image_files, tmp_path):
    folder = image_files["rgb"].parent  # holds good and bad pictures
    summary = run_predict([folder], weights, out_dir=tmp_path / "o", progress=False)
    assert summary.n_images == 8
    failed = {path.name: reason for path, reason in summary.failures}
    assert set(failed) == {"empty.jpg", "truncated.jpg", "text.jpg"}
    assert summary.n_failed == 3
    assert all(str(folder / name) in reason for name, reason in failed.items())
    predictions = read_predictions(summary)
    processed = {Path(p["file_name"]).name for p in predictions}
    assert processed == {"rgb.jpg", "gray.png", "rgba.png", "gray16.png", "exif_rotated.jpg"}
    # image_id is the position in the (sorted) input list, failures included.
    ids = {Path(p["file_name"]).name: p["image_id"] for p in predictions}
    order = sorted(p.name for p in folder.iterdir())
    assert ids == {name: order.index(name) + 1 for name in processed}
    # The drawn pictures, in input order: those of the readable pictures only.
    drawn = [
        f"{Path(name).stem}_pred{'.jpg' if name.endswith('.jpg') else '.png'}"
        for name in order
        if name in processed
    ]
    assert [p.name for p in summary.drawn] == drawn and all(p.is_file() for p in summary.drawn)


def test_batches_keep_order_and_original_sizes(stubs, weights, image_files, tmp_path):
    folder = good_pictures(image_files, tmp_path)
    summary = run_predict(
        [folder], weights, out_dir=tmp_path / "o", batch_size=3, min_size=32, progress=False
    )
    assert [len(batch) for batch in stubs.model.batches] == [3, 1]
    names = sorted(p.name for p in folder.iterdir())
    sizes = [tuple(load_image(folder / name).shape[-2:]) for name in names]
    assert [tuple(s) for s in stubs.target_sizes] == sizes
    assert summary.n_detections == 2 * len(names)


def test_exif_rotated_picture_uses_upright_size(stubs, weights, image_files, tmp_path):
    summary = run_predict(
        [image_files["exif_rotated"]], weights, out_dir=tmp_path / "o", progress=False
    )
    assert stubs.target_sizes == [[40, 20]]  # upright: 40 high, 20 wide
    assert read_predictions(summary)[0]["bbox"] == [5.0, 8.0, 10.0, 16.0]


def test_same_stem_in_two_folders_does_not_overwrite(stubs, weights, image_files, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(image_files["rgb"], tmp_path / sub / "x.jpg")
    out = tmp_path / "o"
    run_predict([tmp_path / "a", tmp_path / "b"], weights, out_dir=out, progress=False)
    assert sorted(p.name for p in out.glob("*.jpg")) == ["x_2_pred.jpg", "x_pred.jpg"]


def test_output_names():
    paths = [Path("a/x.jpg"), Path("b/x.JPEG"), Path("c/X.jpg"), Path("x.png"), Path("y.bmp")]
    assert output_names(paths) == [
        "x_pred.jpg",
        "x_2_pred.jpg",
        "X_3_pred.jpg",  # differs only in case: would clash on macOS and Windows
        "x_pred.png",
        "y_pred.png",
    ]


def test_recipe_and_overrides_reach_the_loader(stubs, weights, image_files, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  num_detections: 7\ndata:\n  eval_min_size: 32\n")
    run_predict(
        [image_files["rgb"]], weights, recipe_path=recipe, out_dir=tmp_path / "o", progress=False
    )
    call = stubs.load_calls[-1]
    assert call["recipe"]["model"]["num_detections"] == 7
    assert call["overrides"] == ()
    assert stubs.num_detections == [7]
    assert stubs.model.batches[-1] == [(3, 32, 42)]  # data.eval_min_size from the recipe

    run_predict(
        [image_files["rgb"]],
        weights,
        overrides=["model.num_detections=5"],
        out_dir=tmp_path / "o",
        progress=False,
    )
    call = stubs.load_calls[-1]
    assert call["recipe"] is None and call["overrides"] == ("model.num_detections=5",)
    assert stubs.num_detections[-1] == 5


def test_class_names():
    coco = load_recipe(None)
    assert class_names(coco) is COCO_CLASS_NAMES
    named = load_recipe(None, ["model.num_classes=2", "model.class_names=[cat, dog]"])
    assert class_names(named) == ["cat", "dog"]
    assert class_names(load_recipe(None, ["model.num_classes=2"])) is None


def test_argument_errors(stubs, weights, image_files, tmp_path):
    picture = [image_files["rgb"]]
    with pytest.raises(DdetrError, match="no such file"):
        run_predict(picture, tmp_path / "missing.pth", progress=False)
    with pytest.raises(DdetrError, match="--threshold must be between 0 and 1, got 1.5"):
        run_predict(picture, weights, threshold=1.5, progress=False)
    with pytest.raises(DdetrError, match="--batch-size must be at least 1"):
        run_predict(picture, weights, batch_size=0, progress=False)
    with pytest.raises(DdetrError, match="not a device"):
        run_predict(picture, weights, device="gpu0", progress=False)
    assert not stubs.load_calls  # nothing was loaded for bad arguments


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_requested_without_cuda(stubs, weights, image_files):
    with pytest.raises(DdetrError, match="--device cuda: CUDA is not available"):
        run_predict([image_files["rgb"]], weights, device="cuda", progress=False)


def test_cli_exit_status_and_summary(stubs, weights, image_files, tmp_path):
    runner = CliRunner()
    out = tmp_path / "o"
    good = good_pictures(image_files, tmp_path)
    result = runner.invoke(app, ["predict", str(good), "-w", str(weights), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "pictures" in result.stdout and "predictions.json" in result.stdout

    folder = image_files["rgb"].parent
    result = runner.invoke(app, ["predict", str(folder), "-w", str(weights), "-o", str(out)])
    assert result.exit_code == 1
    assert "failed" in result.stdout
    failures = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    named = {name for name in ("empty.jpg", "truncated.jpg", "text.jpg")
             for line in failures if str(folder / name) in line}  # fmt: skip
    assert len(failures) == 3 and named == {"empty.jpg", "truncated.jpg", "text.jpg"}
    assert "Traceback" not in result.output


def test_end_to_end_with_a_tiny_real_model(tmp_path, image_files):
    """No stubs: a small randomly initialised model saved as a checkpoint, then `ddetr predict`."""
    from ddetr_cli.model import build_model
    from ddetr_cli.weights import save_checkpoint

    tiny = [
        "model.backbone=resnet18",
        "model.hidden_dim=64",
        "model.nheads=4",
        "model.enc_layers=1",
        "model.dec_layers=1",
        "model.dim_feedforward=64",
        "model.num_queries=10",
        "model.num_classes=3",
        "model.class_names=[a, b, c]",
        "model.num_detections=5",
        "model.attention_backend=reference",
        "data.eval_min_size=64",
        "data.eval_max_size=96",
    ]
    recipe = load_recipe(None, tiny)
    checkpoint = save_checkpoint(tmp_path / "tiny.pth", build_model(recipe), recipe)
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app,
        ["predict", str(image_files["rgb"]), str(image_files["gray"]), "-w", str(checkpoint)]
        + ["-o", str(out), "-t", "0", "-b", "2"],
    )
    assert result.exit_code == 0, result.output
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 10  # num_detections per picture at threshold 0
    assert {p["image_id"] for p in predictions} == {1, 2}
    assert all(0 <= p["category_id"] < 3 for p in predictions)
    assert (out / "rgb_pred.jpg").is_file() and (out / "gray_pred.png").is_file()
