"""What both benchmarks (the model's and the op's) compare: the attention backends to time on a
device, the dtypes they run in, and each row's speed-up over the reference backend."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import torch

from ddetr_cli.errors import DdetrError, UsageError
from ddetr_cli.ops.choices import ATTENTION_BACKENDS
from ddetr_cli.runtime import DTYPES

BACKEND_CHOICES = ("all", *ATTENTION_BACKENDS)

Row = TypeVar("Row")


def check_backend_choice(requested: str) -> None:
    """UsageError unless ``--attention-backend`` is one of ``BACKEND_CHOICES``."""
    if requested not in BACKEND_CHOICES:
        raise UsageError(
            f"--attention-backend {requested!r}: choose one of {', '.join(BACKEND_CHOICES)}"
        )


def backends_to_time(device: torch.device, requested: str = "all") -> list[tuple[str, str]]:
    """The concrete attention backends to time on ``device``, [(name, why)]: with "all" the
    reference and, where it is available, the kernel; else the one ``requested`` resolves to."""
    from ddetr_cli.ops import resolve_backend

    if requested == "all":
        found = [("reference", "pure PyTorch")]
        try:
            found.append(("kernel", resolve_backend(device, "kernel")[1]))
        except RuntimeError:
            pass  # the kernel is unavailable here: only the reference can be timed
        return found
    try:
        return [resolve_backend(device, requested)]
    except RuntimeError as exc:
        raise DdetrError(f"--attention-backend {requested}: {exc}") from None


def check_dtype_names(names: Sequence[str]) -> None:
    """UsageError unless ``--dtype`` gives one or more known names."""
    unknown = [name for name in names if name not in DTYPES]
    if unknown or not names:
        raise UsageError(f"--dtype {','.join(unknown)}: choose from {', '.join(DTYPES)}")


def check_dtypes_on(names: Sequence[str], device: torch.device) -> None:
    """DdetrError for a (known) dtype that ``device`` cannot run."""
    if "bf16" in names and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DdetrError(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bfloat16")


def speedups(
    rows: Sequence[Row],
    setting: Callable[[Row], Hashable],
    speed: Callable[[Row], float | None],
    backend: Callable[[Row], str],
) -> list[float | None]:
    """Each row's ``speed`` (higher is faster) over that of the reference backend's row of the
    same ``setting``; None where either is missing."""
    reference = {setting(r): speed(r) for r in rows if backend(r) == "reference" and speed(r)}
    gains: list[float | None] = []
    for r in rows:
        base, own = reference.get(setting(r)), speed(r)
        gains.append(own / base if own and base else None)
    return gains
