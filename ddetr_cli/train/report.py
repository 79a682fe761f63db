"""What a run tells the world, from process 0 only: plain lines (start, one per epoch) on a
terminal and in a log alike, a progress bar on terminals only, metrics.jsonl, and TensorBoard
event files (train.tensorboard)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ddetr_cli.files import atomic_write

log = logging.getLogger(__name__)
SHOWN_LOSSES = ("loss_ce", "loss_bbox", "loss_giou")
TENSORBOARD_HINT = (
    "train.tensorboard: the tensorboard package is not installed; "
    "pip install 'ddetr-cli[tensorboard]' (continuing without)"
)


def _progress_bar(console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
        console=console,
        transient=True,
        refresh_per_second=2,  # rich's 10 redraws a second take 2% of a CPU core from training
    )


def short_losses(losses: dict[str, float]) -> str:
    keys = ("loss", *SHOWN_LOSSES)
    return "  ".join(f"{k.removeprefix('loss_')} {losses[k]:.3f}" for k in keys if k in losses)


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Reporter:
    """Lines, progress bar and metrics of one run. ``enabled`` is False outside process 0."""

    def __init__(self, output_dir: Path, enabled: bool, progress: bool, tensorboard: bool):
        from rich.console import Console

        self.enabled = enabled
        self.console = Console(highlight=False, soft_wrap=True)
        self.bar = None
        if enabled and progress and self.console.is_terminal:
            self.bar = _progress_bar(self.console)
            self.bar.start()
        self.metrics_path = output_dir / "metrics.jsonl" if enabled else None
        self.writer = _tensorboard_writer(output_dir) if enabled and tensorboard else None
        if enabled and tensorboard and self.writer is None:
            self.line(TENSORBOARD_HINT)
        self._task = None
        self._epoch_start = time.perf_counter()

    def line(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, markup=False)

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int) -> None:
        self._epoch_start = time.perf_counter()
        self._count = 0
        if self.bar is not None:
            if self._task is not None:
                self.bar.remove_task(self._task)
            self._task = self.bar.add_task(
                f"epoch {epoch + 1}/{epochs}", total=total, completed=done, speed="", losses=""
            )

    def advance(self, batches: int, losses: dict[str, float]) -> None:
        self._count += batches
        if self.bar is not None and self._task is not None:
            elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
            speed = f"{self._count / elapsed:.2f} it/s"
            self.bar.update(self._task, advance=batches, speed=speed, losses=short_losses(losses))

    def epoch_seconds(self) -> float:
        return time.perf_counter() - self._epoch_start

    def write(self, record: dict[str, Any], lrs: dict[str, float] | None = None) -> None:
        """A metrics.jsonl line, and its scalars in TensorBoard."""
        if self.metrics_path is not None:
            with self.metrics_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            _to_tensorboard(self.writer, record, lrs or {})

    def forget_after(self, step: int) -> None:
        """On resume: drop the metrics lines a killed run wrote after its last checkpoint
        (step > `step`), so the resumed run's lines follow on instead of repeating steps."""
        if self.metrics_path is None or not self.metrics_path.is_file():
            return
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            with atomic_write(self.metrics_path) as fh:
                fh.write("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _tensorboard_writer(output_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(output_dir))


def _to_tensorboard(writer, record: dict[str, Any], lrs: dict[str, float]) -> None:
    step = record["step"]
    if record["type"] == "step":
        for key, value in record.items():
            if key.startswith("loss") or key == "grad_norm":
                writer.add_scalar(f"train/{key}", value, step)
        for name, lr in lrs.items():
            writer.add_scalar(f"lr/{name}", lr, step)
    else:
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
            if key in record:
                writer.add_scalar(f"val/{key}", record[key], step)
        writer.add_scalar("train/epoch_loss", record.get("loss", float("nan")), step)
    writer.flush()
