"""Names a module resolves on first use, as a module-level ``__getattr__`` (PEP 562).

Packages re-export their public names this way, so that importing one light module of a package
(``model.variants``, ``ops.choices``) does not import torch; old import paths of names that moved
use it with ``moved=True``, and every access warns, naming the new path.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping


def lazy_getattr(
    module: str, names: Mapping[str, str], moved: bool = False
) -> Callable[[str], object]:
    """A ``__getattr__`` for ``module``: a name of ``names`` (name -> the module that defines
    it) is looked up there when asked for; with ``moved``, with a DeprecationWarning each time."""

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        home = names[name]
        if moved:
            warnings.warn(
                f"{module}.{name} moved to {home}.{name}; the old path goes away in ddetr-cli 0.3",
                DeprecationWarning,
                stacklevel=2,
            )
        return getattr(importlib.import_module(home), name)

    return __getattr__
