"""The ``ddetr ops`` group: build the attention kernels now, and see which backend runs where."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ddetr_cli.cli.console import group
from ddetr_cli.errors import DdetrError, UsageError

ops_app = group("The deformable attention kernels: build them now, see which backend runs and why.")
_console = Console()


def _default_device_types() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@ops_app.command("build")
def ops_build(
    device: Annotated[
        list[str] | None,
        typer.Option(
            help="cpu and/or cuda (repeatable; default: cpu, and cuda when a GPU is present). "
            "Building cuda without a GPU needs TORCH_CUDA_ARCH_LIST, e.g. '9.0'.",
        ),
    ] = None,
) -> None:
    """Compile the kernels now (normally they are built on first use) and say where and how long.

    Examples:
      ddetr ops build
      TORCH_CUDA_ARCH_LIST="8.0;9.0" ddetr ops build --device cuda
    """
    from ddetr_cli.ops import build

    kinds = device or _default_device_types()
    unknown = sorted(set(kinds) - {"cpu", "cuda"})
    if unknown:
        raise UsageError(f"--device {unknown[0]}: expected cpu or cuda")
    failures = []
    for kind in kinds:
        start = time.perf_counter()
        try:
            build.load_extension(kind)
        except build.KernelBuildError as exc:
            failures.append(f"{kind}: {exc}")
            continue
        info = build.build_info()[kind]
        when = "compiled now" if info["built_now"] else "compiled earlier"
        _console.print(
            f"{kind} kernel: {info['cache_dir']} ({when} in {info.get('build_seconds', 0):.1f} s; "
            f"ready in {time.perf_counter() - start:.1f} s)",
            soft_wrap=True,
            highlight=False,
        )
    if failures:
        raise DdetrError("kernel build failed: " + "; ".join(failures))


@ops_app.command("info")
def ops_info() -> None:
    """For each device: which attention backend `auto` runs, and why (builds on first use).

    Example:
      ddetr ops info
    """
    import torch

    from ddetr_cli.ops import build, resolve_backend
    from ddetr_cli.ops.kernel import DISABLE_ENV

    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    table = Table(title="ddetr ops info", title_justify="left")
    for column in ("device", "backend", "why"):
        table.add_column(column, overflow="fold")
    for device in devices:
        backend, reason = resolve_backend(device, "auto")
        name = device if device == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
        table.add_row(name, backend, reason)
    _console.print(table)
    cuda = torch.version.cuda or "none (CPU build of torch)"
    _console.print(
        f"torch {torch.__version__}, CUDA {cuda}; kernel cache: {build.cache_root()}; "
        f"{DISABLE_ENV}={os.environ.get(DISABLE_ENV, '') or 'unset'}",
        soft_wrap=True,
        highlight=False,
    )
