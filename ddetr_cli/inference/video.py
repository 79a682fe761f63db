"""`ddetr predict` on a video: its frames in batches through the same detector as pictures, one
JSON line per frame and the frames drawn into an MP4.

A background thread decodes (``video.reader``) while the model runs. Each frame's line is
flushed as soon as it is known and the video is finished in ``finally``, so Ctrl-C (or a
decoding error) leaves a complete JSON Lines file and a playable video of the frames done.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ddetr_cli.errors import DdetrError, UsageError
from ddetr_cli.inference.detections import (
    Detect,
    Settings,
    above_threshold,
    detection_entries,
    draw_kept,
)
from ddetr_cli.inference.video_progress import FrameProgress
from ddetr_cli.video.reader import Frame, FrameReader
from ddetr_cli.video.writer import VideoWriter

log = logging.getLogger(__name__)
VIDEO_SUFFIX = "_pred.mp4"


@dataclass(frozen=True)
class VideoOptions:
    """Which frames of each video are processed: every ``stride``-th, from ``start`` seconds to
    before ``end`` (None: to the end)."""

    stride: int = 1
    start: float = 0.0
    end: float | None = None

    def check(self) -> None:
        """UsageError for values that make no sense."""
        if self.stride < 1:
            raise UsageError(f"--stride must be at least 1, got {self.stride}")
        if self.start < 0:
            raise UsageError(f"--start must be at least 0 seconds, got {self.start:g}")
        if self.end is not None and self.end <= self.start:
            raise UsageError(f"--end ({self.end:g} s) must be after --start ({self.start:g} s)")


@dataclass
class VideoResult:
    """What predict did with one video."""

    path: Path
    jsonl_path: Path
    video_path: Path | None  # None with --no-draw, or when no frame was processed
    frames: int = 0  # frames processed: lines in the JSONL, frames in the video
    detections: int = 0
    seconds: float = 0.0  # wall time, opening the file included
    failure: str | None = None  # why the video was not read to its end

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def jsonl_name(video_name: str) -> str:
    """'clip.jsonl' beside 'clip_pred.mp4' (and 'clip_2.jsonl' beside 'clip_2_pred.mp4')."""
    return video_name.removesuffix(VIDEO_SUFFIX) + ".jsonl"


def _batches(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Outputs:
    """The JSON lines and the drawn video of one video, written frame by frame."""

    def __init__(self, jsonl: IO[str], video_path: Path, settings: Settings, fps) -> None:
        self.jsonl, self.video_path, self.settings, self.fps = jsonl, video_path, settings, fps
        self.writer: VideoWriter | None = None
        self.first_time: float | None = None
        self.frames = self.detections = 0

    def add(self, frame: Frame, detections: dict) -> None:
        kept = above_threshold(detections, self.settings.threshold)
        if self.settings.draw:
            self._draw(frame, kept)
        line = {"frame": frame.index, "time": frame.time, "detections": detection_entries(kept)}
        self.jsonl.write(json.dumps(line) + "\n")
        self.jsonl.flush()  # a line per frame, readable while the video runs and after Ctrl-C
        self.frames += 1
        self.detections += len(kept["scores"])

    def _draw(self, frame: Frame, kept: dict) -> None:
        if self.writer is None:  # the first frame's upright size is the video's
            height, width = frame.picture.shape[-2:]
            self.writer = VideoWriter(self.video_path, width, height, self.fps)
            if self.writer.note:
                log.warning("%s: %s", self.video_path, self.writer.note)
            self.first_time = frame.time
        self.writer.write(
            draw_kept(frame.picture, kept, self.settings), frame.time - self.first_time
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def predict_video(
    detect: Detect, path: Path, video_path: Path, options: VideoOptions, settings: Settings
) -> VideoResult:
    """Run ``detect`` on the frames of the video at ``path`` that ``options`` select.

    Writes ``<stem>.jsonl`` beside ``video_path``, one line per processed frame: ``{"frame":
    index in the video from 0, "time": seconds, "detections": [{"category_id", "bbox": [x, y,
    w, h] in the frame's pixels, "score"}]}``; and, unless ``settings.draw`` is off,
    ``video_path`` (``<stem>_pred.mp4``) with the boxes drawn, at the processed frames' own
    times. A video that cannot be opened, or decoded to its end, gives a result with a
    ``failure`` line (what was done before is kept); Ctrl-C finishes both files and re-raises.
    """
    started = time.perf_counter()
    result = VideoResult(path, video_path.with_name(jsonl_name(video_path.name)), None)
    try:
        queue_size = 2 * settings.batch_size + 2
        reader = FrameReader(path, options.start, options.end, options.stride, queue_size)
    except DdetrError as exc:
        result.failure = str(exc)
        return result
    total = reader.info.frames_between(options.start, options.end, options.stride)
    rate = reader.info.fps / options.stride if reader.info.fps else 25  # the written video's
    with (
        reader,
        result.jsonl_path.open("w", encoding="utf-8") as jsonl,
        FrameProgress(path.name, total, settings.progress) as progress,
    ):
        outputs = _Outputs(jsonl, video_path, settings, rate)
        try:
            for batch in _batches(reader, settings.batch_size):
                for frame, found in zip(batch, detect([f.picture for f in batch]), strict=True):
                    outputs.add(frame, found)
                progress.advance(len(batch))
        except DdetrError as exc:  # decoding stopped early; what was done is kept
            result.failure = str(exc)
        except KeyboardInterrupt:
            files = [result.jsonl_path, *([video_path] if outputs.writer else [])]
            held = " and ".join(map(str, files))
            log.warning(
                "interrupted after %d frames of %s; %s hold them", outputs.frames, path, held
            )
            raise
        finally:
            outputs.close()
            result.frames, result.detections = outputs.frames, outputs.detections
            result.video_path = outputs.writer.path if outputs.writer else None
            result.seconds = time.perf_counter() - started
    return result
