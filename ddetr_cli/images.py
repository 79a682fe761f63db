"""Deprecated: reading pictures moved to ``ddetr_cli.data.pictures`` (0.2), the evaluation
transform to ``ddetr_cli.data.transforms`` (0.2). Importing names from here works for this
release and warns."""

from ddetr_cli.lazy import lazy_getattr

MOVED = {
    "list_images": "ddetr_cli.data.pictures",
    "load_image": "ddetr_cli.data.pictures",
    "IMAGENET_MEAN": "ddetr_cli.data.transforms",
    "IMAGENET_STD": "ddetr_cli.data.transforms",
    "eval_size": "ddetr_cli.data.transforms",
    "eval_transform": "ddetr_cli.data.transforms",
}
__all__ = list(MOVED)
__getattr__ = lazy_getattr(__name__, MOVED, moved=True)
