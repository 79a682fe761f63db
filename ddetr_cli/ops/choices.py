"""The attention op's backends by name, without importing torch (recipes and options list them)."""

from __future__ import annotations

# auto: the compiled kernel where it is available, else the reference (ops/backends.py).
ATTENTION_BACKENDS = ("auto", "reference", "kernel")
