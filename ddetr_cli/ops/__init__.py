"""Multi-scale deformable attention (MSDA): the public op, its backends and its cost model,
loaded on first use (``ddetr_cli.lazy``), so that recipes read ``ops.choices`` without torch."""

from ddetr_cli.lazy import lazy_getattr

_EXPORTS = {
    **dict.fromkeys(("ms_deform_attn", "ms_deform_attn_macs"), "ddetr_cli.ops.op"),
    "ms_deform_attn_reference": "ddetr_cli.ops.reference",
    "resolve_backend": "ddetr_cli.ops.backends",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
