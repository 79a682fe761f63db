"""Video files, read and written through PyAV (FFmpeg), the optional extra ``ddetr-cli[video]``.

``reader`` decodes frames in a background thread, so decoding overlaps whatever consumes them;
``writer`` encodes frames to an MP4 (H.264 where this FFmpeg build has an encoder for it).
PyAV is imported only when a video is read or written: without the extra, everything else works
and a video input is refused in one line that names the extra.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ddetr_cli.extras import require

# What `ddetr predict` takes as a video, named or found in a folder: the containers FFmpeg reads
# that cameras, phones and editors write. Any codec inside them that FFmpeg decodes works.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video by its extension."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def require_av() -> ModuleType:
    """The ``av`` module, or one DdetrError line saying ``pip install 'ddetr-cli[video]'``."""
    return require("av", "video")
