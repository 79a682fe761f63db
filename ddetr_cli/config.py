"""Deprecated: recipes moved to ``ddetr_cli.recipe`` (0.2). Importing names from here works for
this release and warns."""

from ddetr_cli import recipe
from ddetr_cli.lazy import lazy_getattr

MOVED = {
    **dict.fromkeys(recipe.__all__, "ddetr_cli.recipe"),
    "BACKBONES": "ddetr_cli.model.variants",
    "ATTENTION_BACKENDS": "ddetr_cli.ops.choices",
}
__all__ = list(MOVED)
__getattr__ = lazy_getattr(__name__, MOVED, moved=True)
