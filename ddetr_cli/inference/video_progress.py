"""Progress through a video's frames: a bar with frames per second on a terminal, and a plain
line per 10% (or per 100 frames when the length is unknown) where the output goes to a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

LINES_EVERY_UNKNOWN = 100  # frames between plain lines when the frame count is unknown


class FrameProgress:
    """``advance(n)`` after each batch of frames of the video ``name``; ``total`` is the number
    of frames expected (None: unknown). Silent unless ``enabled``."""

    def __init__(
        self, name: str, total: int | None, enabled: bool, stream: TextIO | None = None
    ) -> None:
        self.name, self.total = name, total or None
        self.done, self._next_line = 0, 1
        self._started = time.perf_counter()
        self._stream = stream or sys.stderr
        console = Console(file=self._stream)
        self._bar: Progress | None = None
        self._plain = enabled and not console.is_terminal
        if enabled and console.is_terminal:
            self._bar = Progress(
                TextColumn(name),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[fps]} frames/s"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._bar.add_task(name, total=self.total, fps="-")
            self._bar.start()

    def frames_per_second(self) -> float:
        return self.done / max(time.perf_counter() - self._started, 1e-9)

    def advance(self, frames: int) -> None:
        self.done += frames
        if self._bar is not None:
            fps = f"{self.frames_per_second():.1f}"
            self._bar.update(self._task, advance=frames, fps=fps)
        elif self._plain:
            self._line()

    def _line(self) -> None:
        """One line each time the count passes a tenth of the total (or 100 more frames)."""
        if self.total:
            tenths = min(10, self.done * 10 // self.total)
            if tenths < self._next_line:
                return
            self._next_line = tenths + 1
            where = f"{tenths * 10}% ({self.done} of {self.total} frames"
        else:
            if self.done < self._next_line * LINES_EVERY_UNKNOWN:
                return
            self._next_line = self.done // LINES_EVERY_UNKNOWN + 1
            where = f"{self.done} frames ("
        self._stream.write(f"{self.name}: {where}, {self.frames_per_second():.1f} frames/s)\n")
        self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> FrameProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
