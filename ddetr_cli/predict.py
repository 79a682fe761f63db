"""Deprecated: ``ddetr predict``'s function moved to ``ddetr_cli.inference.predict`` (0.2).
Importing names from here works for this release and warns."""

from ddetr_cli.lazy import lazy_getattr

MOVED = dict.fromkeys(
    ("PREDICTIONS_FILE", "PredictSummary", "check_options", "output_names", "run_predict"),
    "ddetr_cli.inference.predict",
)
__all__ = list(MOVED)
__getattr__ = lazy_getattr(__name__, MOVED, moved=True)
