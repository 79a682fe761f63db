"""Multi-scale deformable attention (MSDA): the public op, its backends and its cost model."""

from ddetr_cli.ops.backends import resolve_backend
from ddetr_cli.ops.op import ms_deform_attn, ms_deform_attn_macs
from ddetr_cli.ops.reference import ms_deform_attn_reference

__all__ = [
    "ms_deform_attn",
    "ms_deform_attn_macs",
    "ms_deform_attn_reference",
    "resolve_backend",
]
