"""Writing frames to an MP4: H.264 where this FFmpeg build has an encoder for it, else
MPEG-4 Part 2, said in one line (``VideoWriter.note``).

The file is written under a hidden temporary name beside its path and renamed by ``close``
(which predict calls after Ctrl-C too), so ``<name>.mp4`` is always a finished, playable video
of the frames written; ``discard`` removes it instead, and a crash that skips both leaves only
the hidden temporary file.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from ddetr_cli.errors import DdetrError
from ddetr_cli.files import publish, temporary_beside
from ddetr_cli.video import require_av
from ddetr_cli.video.reader import ffmpeg_reason

# libx264: "fast" costs little quality over "medium" at half the time; CRF 20 keeps thin box
# edges and label text crisp.
H264_OPTIONS = {"preset": "fast", "crf": "20"}
# MP4 index at the front: the file plays while it downloads (browsers, chat apps).
MUXER_OPTIONS = {"movflags": "+faststart"}
# Frame times are counted in ticks of this clock: exact for 24, 25, 30, 50 and 60 frames per
# second and NTSC's 30000/1001, and within MPEG-4 Part 2's limit (at most 65535 per second).
CLOCK = Fraction(1, 60_000)


def _has_encoder(av: Any, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (ValueError, av.FFmpegError):  # UnknownCodecError is a ValueError
        return False
    return True


def choose_codec(av: Any, width: int, height: int) -> tuple[str, str, str | None]:
    """(encoder, pixel format, a note or None) for frames of this size."""
    if _has_encoder(av, "libx264"):
        if width % 2 == 0 and height % 2 == 0:
            return "libx264", "yuv420p", None
        # 4:2:0 needs even sides; 4:4:4 keeps the size exact, but some players refuse it.
        note = f"{width}x{height} has an odd side: H.264 4:4:4, which browsers and QuickTime "
        return "libx264", "yuv444p", note + "do not play"
    return "mpeg4", "yuv420p", "no H.264 encoder in this FFmpeg build: writing MPEG-4 Part 2"


class VideoWriter:
    """An MP4 at ``path`` of ``width`` x ``height`` frames, nominally ``fps`` frames per second;
    each frame is placed at its own time (``write(picture, seconds)``), so a video that skips
    frames (``--stride``) or a variable frame rate keeps its timing."""

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction) -> None:
        av = require_av()
        self.path = Path(path)
        codec, pixel_format, self.note = choose_codec(av, width, height)
        self._tmp = temporary_beside(self.path)
        self.frames = 0
        self._last_pts = -1
        try:
            self._container = av.open(str(self._tmp), "w", format="mp4", options=MUXER_OPTIONS)
            self._stream = self._container.add_stream(
                codec, rate=fps, options=H264_OPTIONS if codec == "libx264" else {}
            )
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = pixel_format
            self._stream.codec_context.time_base = CLOCK
        except av.FFmpegError as exc:
            self._tmp.unlink(missing_ok=True)
            raise DdetrError(f"{self.path}: cannot write video ({ffmpeg_reason(exc)})") from None

    def write(self, picture: torch.Tensor, seconds: float) -> None:
        """Encode a (3, H, W) uint8 RGB frame shown at ``seconds`` from the start."""
        av = require_av()
        frame = av.VideoFrame.from_ndarray(
            picture.permute(1, 2, 0).contiguous().numpy(), format="rgb24"
        )
        # Strictly increasing: timestamps closer than the clock's tick would collide.
        frame.pts = self._last_pts = max(round(seconds / CLOCK), self._last_pts + 1)
        frame.time_base = CLOCK
        try:
            self._mux(self._stream.encode(frame))
        except av.FFmpegError as exc:
            raise DdetrError(f"{self.path}: cannot write video ({ffmpeg_reason(exc)})") from None
        self.frames += 1

    def _mux(self, packets: Any) -> None:
        for packet in packets:
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder, finish the file and give it its name. A failure here removes the
        temporary file and raises."""
        av = require_av()
        try:
            self._mux(self._stream.encode(None))
            self._container.close()
        except av.FFmpegError as exc:
            self._tmp.unlink(missing_ok=True)
            raise DdetrError(f"{self.path}: cannot write video ({ffmpeg_reason(exc)})") from None
        publish(self._tmp, self.path)

    def discard(self) -> None:
        """Close without giving the file its name: nothing is left behind."""
        try:
            self._container.close()
        finally:
            self._tmp.unlink(missing_ok=True)
