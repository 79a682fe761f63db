"""Deformable DETR model: every configuration of the official release.

The names below are imported on first use, so that ``model.variants`` (what recipes check
against) is read without importing torch.
"""

from ddetr_cli.lazy import lazy_getattr

_EXPORTS = {
    "MLP": "ddetr_cli.model.detector",
    "DeformableDETR": "ddetr_cli.model.detector",
    "build_model": "ddetr_cli.model.detector",
    "post_process": "ddetr_cli.model.postprocess",
    "inverse_sigmoid": "ddetr_cli.model.utils",
    "pad_images": "ddetr_cli.model.utils",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
