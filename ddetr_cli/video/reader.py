"""Reading a video: what it holds (``probe_video``) and its frames (``FrameReader``), decoded
by a background thread into a bounded queue when torch leaves a CPU core free, so decoding
overlaps the model, or in line between the model's frames when torch's threads take every core;
either way memory stays that of a few frames however long the video is.

Frames are counted from the first one the decoder gives (index 0), timed in seconds from the
stream's start, and turned upright when the container says the video is rotated (phones store
portrait video as landscape frames plus a rotation), as pictures are by their EXIF orientation.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from ddetr_cli.errors import DdetrError, one_line
from ddetr_cli.video import require_av

_END = object()  # the decoder's last item when the video was read to its end
_WAIT = 0.1  # seconds between checks of the stop flag while the queue is full or empty


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says about its (first) video stream."""

    path: Path
    width: int  # as stored, before any rotation
    height: int
    fps: Fraction  # average frame rate (FFmpeg's guess when the container has none)
    time_base: Fraction  # of the stream's timestamps
    frames: int  # declared frame count; 0 when the container does not say (mkv, webm)
    duration: float | None  # seconds, when known
    codec: str

    def frames_between(self, start: float, end: float | None, stride: int) -> int | None:
        """About how many frames [start, end) every ``stride``-th holds (for progress)."""
        total = self.frames or (round(self.duration * self.fps) if self.duration else 0)
        if not total or not self.fps:
            return None
        first = min(total, math.ceil(start * self.fps))
        last = total if end is None else min(total, math.ceil(end * self.fps))
        return max(0, math.ceil((last - first) / stride))


@dataclass
class Frame:
    """One decoded frame."""

    index: int  # position in the video, from 0
    time: float  # seconds from the start of the video
    picture: torch.Tensor  # (3, H, W) uint8 RGB, upright


def ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's own words for an error, without PyAV's errno and function name."""
    return getattr(exc, "strerror", None) or one_line(exc)


def _open(path: Path) -> tuple[Any, Any]:
    """(container, its first video stream), or one DdetrError line naming the file."""
    av = require_av()
    if not path.is_file():
        raise DdetrError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise DdetrError(f"{path}: cannot read video ({ffmpeg_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise DdetrError(f"{path}: has no video stream")
    return container, container.streams.video[0]


def _info(path: Path, container: Any, stream: Any) -> VideoInfo:
    context = stream.codec_context
    fps = stream.average_rate or stream.guessed_rate or Fraction(0)
    duration = None
    if stream.duration is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # FFmpeg's AV_TIME_BASE
    return VideoInfo(
        path,
        context.width,
        context.height,
        Fraction(fps),
        Fraction(stream.time_base),
        stream.frames,
        duration,
        context.name,
    )


def probe_video(path: str | Path) -> VideoInfo:
    """The header of the video at ``path``; DdetrError for anything that is not a readable
    video with a video stream."""
    path = Path(path)
    container, stream = _open(path)
    try:
        return _info(path, container, stream)
    finally:
        container.close()


def upright(frame: Any) -> torch.Tensor:
    """A decoded frame as a (3, H, W) uint8 RGB tensor, rotated as its display matrix says
    (PyAV gives the counterclockwise angle)."""
    pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
    turns = round((frame.rotation or 0) / 90) % 4
    if turns:
        pixels = torch.rot90(pixels, turns, dims=(1, 2))
    return pixels.contiguous()


def spare_core() -> bool:
    """Whether this process may use more CPU cores than torch's threads take."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()


class FrameReader:
    """The frames of a video from ``start`` seconds to before ``end``, every ``stride``-th
    counted from the first one at or after ``start``.

    ``background`` decodes in a thread, up to ``queue_size`` frames ahead; False decodes in
    line as frames are asked for; None (the default) chooses the thread only when torch leaves
    a CPU core free (``spare_core``): on a 2-core CPU running torch on both, a decoding thread
    halved the model's frames per second (its interruptions stall torch's parallel workers),
    while decoding in line costs about 2 ms a frame.

    Iterating yields ``Frame``s; a video that cannot be decoded to its end raises one
    DdetrError line after the frames decoded before the problem. ``close()`` (or leaving the
    ``with`` block) stops decoding and closes the file, whatever state iteration is in.
    Frames before ``start`` are decoded (to count them exactly) but not converted.
    """

    def __init__(
        self,
        path: str | Path,
        start: float = 0.0,
        end: float | None = None,
        stride: int = 1,
        queue_size: int = 8,
        background: bool | None = None,
    ) -> None:
        self.path = Path(path)
        self.start, self.end, self.stride = start, end, stride
        self._container, self._stream = _open(self.path)
        self.info = _info(self.path, self._container, self._stream)
        self.background = spare_core() if background is None else background
        if self.background:
            self._stream.thread_type = "AUTO"  # FFmpeg's own decoding threads, frame or slice
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._stop = threading.Event()
        self.decoded = 0  # frames the decoder gave so far, wanted or not
        self.stopped_at_end = False  # reached ``end`` before the video's end
        self._items = self._decoded_items()
        self._thread: threading.Thread | None = None
        if self.background:
            self._thread = threading.Thread(target=self._decode, name="ddetr-decode", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ the decoder

    def _put(self, item: Any) -> bool:
        """Put ``item`` on the queue unless asked to stop first; whether it was put."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_WAIT)
                return True
            except queue.Full:
                continue
        return False

    def _seconds(self, frame: Any, index: int, offset: float) -> float:
        if frame.time is None:  # no timestamp: the frame rate tells
            rate = self._stream.average_rate or self._stream.guessed_rate
            return index / float(rate) if rate else 0.0
        return frame.time - offset

    def _frames(self) -> Iterator[Frame]:
        """The wanted frames; stops at ``end``. Raises the decoder's error, if any."""
        stream = self._stream
        offset = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        first = None
        for frame in self._container.decode(stream):
            index, self.decoded = self.decoded, self.decoded + 1
            seconds = self._seconds(frame, index, offset)
            if seconds < self.start - 1e-6:
                continue
            if self.end is not None and seconds >= self.end - 1e-6:
                self.stopped_at_end = True
                return
            first = index if first is None else first
            if (index - first) % self.stride == 0:
                yield Frame(index, round(seconds, 6), upright(frame))

    def _decoded_items(self) -> Iterator[Any]:
        """The wanted frames, then ``_END``, or the error that stopped decoding as an item."""
        av = require_av()
        try:
            yield from self._frames()
            declared = self._stream.frames
            if not self.stopped_at_end and declared and self.decoded < declared:
                yield DdetrError(
                    f"{self.path}: truncated: {self.decoded} of the {declared} "
                    "frames its header declares could be read"
                )
            else:
                yield _END
        except av.FFmpegError as exc:
            yield DdetrError(
                f"{self.path}: decoding failed at frame {self.decoded} ({ffmpeg_reason(exc)})"
            )
        except Exception as exc:  # anything else reaches the consumer as it is
            yield exc
        finally:
            self._container.close()

    def _decode(self) -> None:
        """The decoding thread: every item onto the queue, until asked to stop."""
        try:
            for item in self._items:
                if not self._put(item):
                    return
        finally:
            self._items.close()

    # ------------------------------------------------------------------ the consumer's side

    def _queued_items(self) -> Iterator[Any]:
        while True:
            try:
                yield self._queue.get(timeout=_WAIT)
            except queue.Empty:
                if self._thread.is_alive() or not self._queue.empty():
                    continue
                return  # stopped by close()

    def __iter__(self) -> Iterator[Frame]:
        for item in self._queued_items() if self.background else self._items:
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self) -> None:
        """Stop decoding and close the file; waits for the thread (it checks every 0.1 s)."""
        self._stop.set()
        if self._thread is None:
            self._items.close()
            self._container.close()  # also when decoding never started
            return
        while self._thread.is_alive():
            try:  # make room, so a thread blocked on a full queue sees the flag at once
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=_WAIT)

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
