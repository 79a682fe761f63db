"""Choosing a backend for ``ms_deform_attn``: "reference" (pure PyTorch) or "kernel" (compiled).

The kernel lives in ``ddetr_cli.ops.kernel`` and is imported lazily, so a missing or broken kernel
never breaks ``import ddetr_cli``. Availability is asked once per device type and cached in the
kernel module, because the kernel's check may be slow (e.g. a JIT build attempt).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import torch

from ddetr_cli.ops.choices import ATTENTION_BACKENDS

log = logging.getLogger("ddetr_cli.ops")

BACKENDS = ATTENTION_BACKENDS
_KERNEL_MODULE = "ddetr_cli.ops.kernel"

_logged_devices: set[str] = set()


def import_kernel() -> tuple[ModuleType | None, str]:
    """Import the kernel module; returns (module, "") or (None, why it is unusable)."""
    try:
        return importlib.import_module(_KERNEL_MODULE), ""
    except ModuleNotFoundError as exc:
        if exc.name == _KERNEL_MODULE:
            return None, "kernel module not present"
        return None, f"kernel module failed to import: {exc}"
    except ImportError as exc:  # e.g. sys.modules entry set to None, or a broken extension
        if _KERNEL_MODULE in str(exc):
            return None, "kernel module not present"
        return None, f"kernel module failed to import: {exc}"


def kernel_module() -> ModuleType:
    """The kernel module, for code that has already resolved the "kernel" backend."""
    module, reason = import_kernel()
    if module is None:
        raise RuntimeError(f"ms_deform_attn kernel backend is unusable: {reason}")
    return module


def kernel_availability(device: torch.device) -> tuple[bool, str]:
    """(available, human reason) for the kernel on ``device``. The kernel module caches its own
    answer per device type (the one availability cache); this adds the import failure."""
    module, reason = import_kernel()
    if module is None:
        return False, reason
    try:
        ok, why = module.is_available(device)
    except Exception as exc:  # a failing probe means "unavailable", not a crash
        return False, f"kernel.is_available failed: {type(exc).__name__}: {exc}"
    return bool(ok), str(why)


def clear_cache() -> None:
    """Forget the kernel's availability and the logging state (tests; after building)."""
    module, _reason = import_kernel()
    if module is not None:
        module.clear_status()
    _logged_devices.clear()


def resolve_backend(device: torch.device | str, requested: str | None = None) -> tuple[str, str]:
    """Resolve a requested backend to a concrete one for ``device``: (backend, reason).

    ``None``/"auto" picks the kernel when available, else the reference (logged once per device).
    "kernel" raises RuntimeError with the reason when the kernel is unavailable.
    """
    device = torch.device(device)
    requested = "auto" if requested is None else requested
    if requested not in BACKENDS:
        raise ValueError(
            f"ms_deform_attn: unknown backend {requested!r}; expected one of {', '.join(BACKENDS)}"
        )
    if requested == "reference":
        return "reference", "requested explicitly"
    ok, reason = kernel_availability(device)
    if requested == "kernel":
        if not ok:
            raise RuntimeError(
                f"ms_deform_attn backend 'kernel' is unavailable on {device}: {reason}"
            )
        return "kernel", reason
    backend = "kernel" if ok else "reference"
    if str(device) not in _logged_devices:
        _logged_devices.add(str(device))
        log.info("ms_deform_attn on %s: using the %s backend (%s)", device, backend, reason)
    return backend, reason
