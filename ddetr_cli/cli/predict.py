"""``ddetr predict``: detections for pictures, videos and folders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ddetr_cli.cli.console import EXIT_FAILED, print_line, stderr, stdout
from ddetr_cli.cli.options import (
    AttentionBackend,
    BatchSize,
    Device,
    InputsAndOverrides,
    MaxSize,
    MinSize,
    Out,
    Recipe,
    Threshold,
    Weights,
    describe_slicing,
    split_overrides,
    with_backend,
    with_slicing,
)

if TYPE_CHECKING:
    from ddetr_cli.inference.predict import PredictSummary


@with_slicing
def predict(
    images: InputsAndOverrides,
    weights: Weights,
    recipe: Recipe = None,
    threshold: Threshold = 0.5,
    out: Out = Path("predictions"),
    device: Device = "cpu",
    batch_size: BatchSize = 1,
    min_size: MinSize = None,
    max_size: MaxSize = None,
    attention_backend: AttentionBackend = None,
    stride: Annotated[int, typer.Option(help="Videos: every Nth frame.")] = 1,
    start: Annotated[float, typer.Option(help="Videos: from this second.")] = 0.0,
    end: Annotated[
        float | None,
        typer.Option(help="Videos: up to this second (default: the end).", show_default=False),
    ] = None,
    draw: Annotated[
        bool,
        typer.Option(help="Write drawn pictures and videos (--no-draw: the JSON only)."),
    ] = True,
    slicing: Any = None,  # SliceOptions | None, from --slice and its companions (with_slicing)
) -> None:
    """Detect objects in pictures and videos; write COCO-results JSON, JSON lines per video
    frame, and pictures and videos with boxes drawn.

    Boxes are x, y, width, height in the original picture's pixels; each detection also carries
    the picture's file_name, so `ddetr evaluate --predictions` can match it to annotations.
    A video (mp4, m4v, mov, avi, mkv, webm; needs pip install 'ddetr-cli\\[video]') gives
    <stem>.jsonl, a line per processed frame (frame index, time in seconds, detections), and
    <stem>_pred.mp4. Folders are searched for pictures and videos. Unreadable pictures and
    videos are reported and skipped (exit status 1); Ctrl-C leaves a video's files complete up
    to the last frame done. With --slice, each picture (and video frame) is cut into
    overlapping tiles seen at their own resolution and their boxes merged.

    Examples:
      ddetr predict photo.jpg --weights checkpoint.pth
      ddetr predict photos/ more/ -w r50_deformable_detr.pth -t 0.3 -o out/
      ddetr predict photos/ -w runs/shapes model.num_detections=20
      ddetr predict photos/ -w checkpoint.pth --device cuda --batch-size 4
      ddetr predict clip.mp4 -w runs/shapes --stride 2 --start 10 --end 20 -b 4
      ddetr predict aerial/ -w runs/shapes_small --slice 128 128 --overlap 0.25 -b 16
    """
    from ddetr_cli.inference.predict import run_predict
    from ddetr_cli.inference.video import VideoOptions

    pictures, overrides = split_overrides(images)
    overrides = with_backend(overrides, attention_backend)
    summary = run_predict(
        pictures,
        weights,
        recipe_path=recipe,
        overrides=overrides,
        threshold=threshold,
        out_dir=out,
        device=device,
        batch_size=batch_size,
        min_size=min_size,
        max_size=max_size,
        progress=True,
        slicing=slicing,
        video=VideoOptions(stride, start, end),
        draw=draw,
    )

    stdout.print(_summary_table(summary, threshold, device, draw))
    for _path, reason in summary.failures:
        print_line(f"failed: {reason}", stderr, style="red")
    if summary.n_failed:
        raise typer.Exit(EXIT_FAILED)


def _summary_table(summary: PredictSummary, threshold: float, device: str, draw: bool) -> Table:
    table = Table(title="ddetr predict", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # paths in full, never truncated
    kept = f"score >= {threshold:g}"
    if summary.n_images or not summary.videos:
        table.add_row("pictures", str(summary.n_images))
        table.add_row("detections", f"{summary.n_detections} ({kept})")
        table.add_row("seconds per picture", f"{summary.seconds_per_image:.3f} on {device}")
        table.add_row("predictions", str(summary.predictions_path))
    for video in summary.videos:
        table.add_row("video", str(video.path))
        speed = f"{video.frames_per_second:.1f} frames/s on {device}"
        table.add_row(
            "  frames", f"{video.frames}, {video.detections} detections ({kept}), {speed}"
        )
        outputs = [video.jsonl_path, video.video_path] if video.video_path else [video.jsonl_path]
        table.add_row("  written", ", ".join(map(str, outputs)))
    if summary.slicing is not None:  # video frames are sliced as pictures are
        per = "picture or frame" if summary.videos else "picture"
        table.add_row(f"tiles per {per}", describe_slicing(summary.slicing))
    table.add_row("failed", str(summary.n_failed), style="red" if summary.n_failed else None)
    if draw:
        table.add_row("drawn", f"{summary.out_dir}/")
    return table
