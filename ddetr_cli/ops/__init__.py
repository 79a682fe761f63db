"""Multi-scale deformable attention (MSDA): the public op, its backends and its cost model.

The names below are imported on first use, so that ``ops.choices`` (what recipes check
against) is read without importing torch.
"""

from ddetr_cli.lazy import lazy_getattr

_EXPORTS = {
    "ms_deform_attn": "ddetr_cli.ops.op",
    "ms_deform_attn_macs": "ddetr_cli.ops.op",
    "ms_deform_attn_reference": "ddetr_cli.ops.reference",
    "resolve_backend": "ddetr_cli.ops.backends",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
