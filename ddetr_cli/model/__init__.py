"""Deformable DETR model: every configuration of the official release. Its names load on first
use (``ddetr_cli.lazy``): recipes read ``model.variants`` without torch."""

from ddetr_cli.lazy import lazy_getattr

_EXPORTS = {
    **dict.fromkeys(("MLP", "DeformableDETR", "build_model"), "ddetr_cli.model.detector"),
    "post_process": "ddetr_cli.model.postprocess",
    **dict.fromkeys(("inverse_sigmoid", "pad_images"), "ddetr_cli.model.utils"),
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
