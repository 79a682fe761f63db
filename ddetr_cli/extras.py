"""Optional features: their packages are extras of ddetr-cli, imported only when used.

``require("onnxruntime", "export")`` returns the module, or raises one DdetrError line that says
what to install. Every import of an extra's package goes through here (tests/test_imports.py
checks it), so a missing extra never surfaces as a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ddetr_cli.errors import DdetrError

# extra -> the packages it installs, by import name (pyproject.toml optional-dependencies).
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "hf": ("huggingface_hub",),
    "tensorboard": ("tensorboard",),
    "video": ("av",),
}


def require(module: str, extra: str) -> ModuleType:
    """Import `module` (e.g. "onnxruntime" or "safetensors.torch") of the extra `extra`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or module.split(".")[0]
        raise DdetrError(
            f"this needs {missing}, which is not installed: pip install 'ddetr-cli[{extra}]'"
        ) from None
