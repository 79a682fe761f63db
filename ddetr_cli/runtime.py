"""Run-time helpers every stage shares: the user's device, autocast, processes under torchrun.

A leaf module: it imports nothing else of ddetr's but the errors, so the model, data, training,
evaluation and commands can all use it without import cycles.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ddetr_cli.errors import UsageError

# Recipe / CLI dtype names.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch.device for a user's --device, or a UsageError saying why it cannot be used."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r}: not a device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch has no CUDA support" if torch.version.cuda is None else "no GPU found"
            raise UsageError(f"--device {device}: CUDA is not available ({why}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available; use --device cpu")
    return dev


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    A training step allocates and frees the same tensors every time; a few of them (the FFN's
    hidden activations and their gradients, 2.6 MB at the demo's size) are over glibc's
    thresholds, so by default each step maps fresh pages and faults on them again: ~3,000 page
    faults and ~10 ms of kernel time per step of the shapes demo, none after this call
    (benchmarks/train_cpu.md). Only where memory comes from changes, never a value. The process
    keeps its peak heap; blocks over 256 MiB are still mapped on their own. True when glibc took
    the settings; False elsewhere (macOS, Windows, musl) or with ``DDETR_KEEP_FREED_MEMORY=0``.
    """
    if os.environ.get("DDETR_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # a libc without mallopt (musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 256 << 20) and mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def numerics(device: torch.device) -> dict[str, Any]:
    """What, besides the code, the data and the seed, makes float results differ between two
    runs: torch's version, the vector instructions its CPU kernels use (AVX-512 and AVX2 kernels
    round differently), its thread count (one thread sums some gradients in another order than
    two or more) and the GPU. Training checkpoints carry it, so runs can be told apart."""
    out: dict[str, Any] = {
        "torch": str(torch.__version__),  # a str subclass that weights_only loading refuses
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        out |= {"gpu": torch.cuda.get_device_name(device), "cuda": str(torch.version.cuda)}
    return out


def amp_autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The autocast context for a recipe's train.amp or a benchmark dtype (off/fp32, bf16,
    fp16)."""
    if amp in ("off", "fp32"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[amp])


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True outside distributed runs and in process 0 of one."""
    return not is_distributed() or dist.get_rank() == 0


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj`` (a one-item list outside distributed runs)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# Several processes: ``torchrun --nproc-per-node N -m ddetr_cli train|evaluate ...`` (or across
# machines with ``--nnodes``/``--rdzv-endpoint``) sets RANK, WORLD_SIZE and LOCAL_RANK; without
# them there is a single process. The backend is nccl on CUDA and gloo on CPU.


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    resolve_device("cuda")  # a UsageError (exit 2) when CUDA cannot be used, as for --device
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup_distributed(device_choice: str = "auto") -> Dist:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_choice, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
