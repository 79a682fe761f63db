"""The training-curves view: loss terms, learning rate and val AP over steps, from a run's
metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ddetr_cli.errors import DdetrError
from ddetr_cli.viz.plots import curves_figure

# Curves drawn when the run logged them: (key, record type, title).
CURVES = (
    ("loss", "step", "total loss (weighted)"),
    ("loss_ce", "step", "loss_ce (focal)"),
    ("loss_bbox", "step", "loss_bbox (L1)"),
    ("loss_giou", "step", "loss_giou"),
    ("lr", "step", "learning rate"),
    ("AP", "epoch", "val AP"),
    ("AP50", "epoch", "val AP50"),
)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, with one-line errors for unusable files."""
    if not path.is_file():
        raise DdetrError(f"metrics file not found: {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DdetrError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(record, dict):
            raise DdetrError(f"{path}:{number}: expected a JSON object per line")
        records.append(record)
    return records


def curves_picture(metrics: Path, out: Path, columns: int = 3) -> tuple[Path, list[str]]:
    """Loss terms, learning rate and val AP over steps from a run's metrics.jsonl, as one PNG
    of small matplotlib charts; returns the picture and the curves it holds.

    ``out`` is the picture, or a folder (an existing one, or a path without a picture suffix)
    to hold ``curves.png``.
    """
    records = read_metrics(metrics)
    panels, names = [], []
    for key, kind, title in CURVES:
        rows = [r for r in records if r.get("type") == kind and isinstance(r.get(key), int | float)]
        if rows and all(isinstance(r.get("step"), int | float) for r in rows):
            panels.append((title, [r["step"] for r in rows], [r[key] for r in rows]))
            names.append(key)
    if not panels:
        raise DdetrError(f"{metrics}: no step or epoch records with losses, lr or AP to draw")
    if out.is_dir() or out.suffix.lower() not in {".png", ".jpg", ".jpeg", ".pdf", ".svg"}:
        out = out / "curves.png"
    return curves_figure(panels, out, columns), names
