"""`ddetr predict`: detections for pictures, videos and folders of them: COCO-results JSON and
drawn pictures; videos go frame by frame through ``inference.video``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ddetr_cli.data.class_names import class_names
from ddetr_cli.data.pictures import IMAGE_SUFFIXES, list_images, load_image
from ddetr_cli.data.transforms import eval_transform
from ddetr_cli.errors import DdetrError, UsageError
from ddetr_cli.files import write_json
from ddetr_cli.inference.detections import (
    Detect,
    Settings,
    above_threshold,
    detection_entries,
    draw_kept,
)
from ddetr_cli.inference.video import VideoOptions, VideoResult, predict_video
from ddetr_cli.model import post_process
from ddetr_cli.model.protocol import Detector
from ddetr_cli.runtime import resolve_device
from ddetr_cli.video import VIDEO_SUFFIXES, is_video, require_av
from ddetr_cli.viz.draw import to_pil
from ddetr_cli.weights import resolve_model

if TYPE_CHECKING:
    from ddetr_cli.inference.slicing import SliceOptions

PREDICTIONS_FILE = "predictions.json"
# What a folder is searched for: pictures and videos alike.
INPUT_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES


@dataclass
class PredictSummary:
    """What a prediction run did; the CLI turns it into a table."""

    n_images: int  # pictures found (processed + failed)
    n_failed: int  # pictures and videos
    failures: list[tuple[Path, str]] = field(default_factory=list)  # (picture or video, reason)
    n_detections: int = 0  # kept after the threshold, over all pictures
    seconds_per_image: float = 0.0  # wall time per processed picture, model loading excluded
    out_dir: Path = Path(".")
    predictions_path: Path | None = None  # None when there were no pictures
    drawn: list[Path] = field(default_factory=list)  # the pictures written, in input order
    videos: list[VideoResult] = field(default_factory=list)  # in input order
    slicing: dict[str, Any] | None = None  # SlicedDetector.summary() under --slice


def check_options(
    threshold: float, batch_size: int, min_size: int | None, max_size: int | None
) -> None:
    """UsageError for option values that make no sense."""
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold must be between 0 and 1, got {threshold:g}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    for option, value in (("--min-size", min_size), ("--max-size", max_size)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be at least 1, got {value}")


def output_names(paths: Sequence[Path]) -> list[str]:
    """'<stem>_pred.jpg' (or .png) per picture, '<stem>_pred.mp4' per video; same-stem inputs
    from different folders get '_2', '_3', ... in input order instead of overwriting each
    other."""
    names: list[str] = []
    taken: set[str] = set()
    for path in paths:
        suffix = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
        suffix = ".mp4" if is_video(path) else suffix
        name = f"{path.stem}_pred{suffix}"
        n = 1
        while name.lower() in taken:  # case-insensitive: macOS and Windows file systems
            n += 1
            name = f"{path.stem}_{n}_pred{suffix}"
        taken.add(name.lower())
        names.append(name)
    return names


def _picture_results(image_id: int, path: Path, kept: dict[str, torch.Tensor]) -> list:
    """COCO-results entries of one picture, with its file name."""
    return [
        {"image_id": image_id, "file_name": str(path), **entry} for entry in detection_entries(kept)
    ]


def _save_picture(image: torch.Tensor, path: Path) -> None:
    picture = to_pil(image)
    if path.suffix == ".jpg":
        picture.save(path, quality=90)
    else:
        picture.save(path, compress_level=1)  # ~5x faster than the default, a little larger


def _progress(enabled: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    )


def _drop_own_outputs(paths: list[Path], out_dir: Path) -> list[Path]:
    """Pictures and videos a previous `ddetr predict -o OUT` drew into OUT are not inputs:
    predicting into the input folder twice must not process the first run's `*_pred.*`."""
    out = out_dir.resolve()
    kept = [p for p in paths if not (p.resolve().parent == out and p.stem.endswith("_pred"))]
    if not kept:
        raise DdetrError(f"the only pictures found are ddetr's own drawings in {out_dir}")
    return kept


@dataclass
class _Loaded:
    """A picture ready for the model."""

    image_id: int  # 1-based position in the input
    path: Path
    output_name: str
    picture: torch.Tensor  # uint8 (3, H, W)


def _read_batch(
    paths: Sequence[Path], names: Sequence[str], indices: range, failures: list
) -> list[_Loaded]:
    batch = []
    for index in indices:
        try:
            picture = load_image(paths[index])
        except DdetrError as exc:
            failures.append((paths[index], str(exc)))
            continue
        batch.append(_Loaded(index + 1, paths[index], names[index], picture))
    return batch


def _detect(
    model: Detector,
    pictures: list[torch.Tensor],
    sizes: tuple[int, int],
    num_detections: int,
    device: torch.device,
) -> list[dict[str, torch.Tensor]]:
    tensors = [eval_transform(picture, *sizes).to(device) for picture in pictures]
    # Boxes are scaled to the ORIGINAL picture size, so they land in its pixels.
    original = torch.tensor([picture.shape[-2:] for picture in pictures], device=device)
    return post_process(model(tensors), original, num_detections=num_detections)


def _detector(
    model: Detector,
    recipe: dict[str, Any],
    sizes: tuple[int, int],
    device: torch.device,
    batch_size: int,
    threshold: float,
    slicing: SliceOptions | None,
) -> tuple[Detect, int]:
    """(detections of a list of uint8 pictures, pictures per call): whole pictures,
    ``batch_size`` at a time, or sliced pictures one at a time, ``batch_size`` tiles at a time.
    Video frames go through the same detector, so --slice cuts them as it cuts pictures."""
    num_detections = recipe["model"]["num_detections"]
    if slicing is None:
        detect = partial(_detect, model, sizes=sizes, num_detections=num_detections, device=device)
        return detect, batch_size
    from ddetr_cli.inference.slicing import SlicedDetector

    sliced = SlicedDetector(
        model, slicing, sizes, num_detections, device, batch_size, min_score=threshold
    )
    return sliced, 1


def _predict_pictures(
    detect: Detect,
    paths: Sequence[Path],
    names: Sequence[str],
    settings: Settings,
    summary: PredictSummary,
) -> None:
    """The pictures through ``detect``: ``predictions.json`` and the drawn pictures in the
    summary's ``out_dir``; the summary gets the numbers, the failures and the drawn pictures."""
    out_dir = summary.out_dir
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    with _progress(settings.progress) as bar:
        task = bar.add_task("predict", total=len(paths))
        for start in range(0, len(paths), settings.batch_size):
            indices = range(start, min(start + settings.batch_size, len(paths)))
            batch = _read_batch(paths, names, indices, summary.failures)
            detections = detect([item.picture for item in batch]) if batch else []
            for item, found in zip(batch, detections, strict=True):
                kept = above_threshold(found, settings.threshold)
                results.extend(_picture_results(item.image_id, item.path, kept))
                if settings.draw:
                    _save_picture(
                        draw_kept(item.picture, kept, settings), out_dir / item.output_name
                    )
                    summary.drawn.append(out_dir / item.output_name)
            bar.advance(task, len(indices))
    n_done = len(paths) - len(summary.failures)
    summary.seconds_per_image = (time.perf_counter() - started) / n_done if n_done else 0.0
    summary.n_detections = len(results)
    summary.predictions_path = out_dir / PREDICTIONS_FILE
    write_json(results, summary.predictions_path, indent=1)


def run_predict(
    inputs: Sequence[Path],
    weights: str | Path,
    recipe_path: Path | None = None,
    overrides: Sequence[str] = (),
    threshold: float = 0.5,
    out_dir: Path = Path("predictions"),
    device: str = "cpu",
    batch_size: int = 1,
    min_size: int | None = None,
    max_size: int | None = None,
    progress: bool = True,
    slicing: SliceOptions | None = None,
    video: VideoOptions | None = None,
    draw: bool = True,
    with_videos: bool = True,
) -> PredictSummary:
    """Detect objects in pictures and videos (files and folders); write the results under
    ``out_dir``.

    Pictures: ``predictions.json`` (COCO results: image_id is the picture's 1-based position
    among the input pictures, file_name its path, bbox [x, y, w, h] in original pixels) and one
    ``<stem>_pred.jpg|png`` per picture with the boxes drawn. Videos: ``<stem>.jsonl`` and
    ``<stem>_pred.mp4`` each (``inference.video.predict_video``; ``video`` says which frames).
    ``draw=False`` writes no drawings; ``with_videos=False`` takes pictures only (for the
    contact sheet of ``ddetr visualize predictions``). Pictures and videos that cannot be read
    are listed in the summary's failures; the others are still processed. Detections with
    score >= ``threshold`` are kept (0 keeps all ``model.num_detections`` per picture). The
    model comes from ``resolve_model`` (weights, optional recipe, overrides). With ``slicing``
    each picture and video frame is cut into tiles (``inference.slicing``), ``batch_size``
    tiles per forward pass.
    """
    check_options(threshold, batch_size, min_size, max_size)
    video = video or VideoOptions()
    video.check()
    out_dir = Path(out_dir)
    suffixes, what = (
        (INPUT_SUFFIXES, "pictures or videos") if with_videos else (IMAGE_SUFFIXES, "pictures")
    )
    paths = _drop_own_outputs(list_images(inputs, suffixes, what), out_dir)
    names = dict(zip(paths, output_names(paths), strict=True))
    videos = [path for path in paths if is_video(path)]
    pictures = [path for path in paths if not is_video(path)]
    if videos:
        require_av()  # a missing extra is one line before the model loads, not after pictures
    dev = resolve_device(device)
    model, recipe = resolve_model(weights, recipe_path, overrides, dev)
    model.eval().optimize_for_inference()
    sizes = (
        min_size or recipe["data"]["eval_min_size"],
        max_size or recipe["data"]["eval_max_size"],
    )
    detect, per_call = _detector(model, recipe, sizes, dev, batch_size, threshold, slicing)
    settings = Settings(threshold, per_call, class_names(recipe), draw, progress)
    out_dir.mkdir(parents=True, exist_ok=True)

    summary = PredictSummary(n_images=len(pictures), n_failed=0, out_dir=out_dir)
    with torch.inference_mode():
        if pictures:
            _predict_pictures(detect, pictures, [names[p] for p in pictures], settings, summary)
        for path in videos:
            result = predict_video(detect, path, out_dir / names[path], video, settings)
            summary.videos.append(result)
            if result.failure is not None:
                summary.failures.append((path, result.failure))
    summary.n_failed = len(summary.failures)
    summary.slicing = None if slicing is None else detect.summary()
    return summary
