"""FLOPs of one detector forward, in the DETR papers' convention, with a breakdown by part.

torch.utils.flop_counter counts 2 FLOPs per multiply-add; the DETR papers (Deformable DETR's 173 G)
count one. We count with FlopCounterMode, which includes the deformable sampling through the
``ddetr::ms_deform_attn`` FLOP formula (tools that trace aten ops count it as zero), and halve.

The count runs on a copy of the model on the meta device: shapes only, no arithmetic, so a full
800x1199 forward costs well under a second and needs no memory for activations.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)

CONVENTION = "1 multiply-add = 1 FLOP (the DETR papers' convention; torch's counter halved)"
PARTS = ("backbone", "input_projection", "encoder", "decoder", "heads")
# Module paths (under the model's class name) that make up each part; "heads" is the rest:
# class/box heads (also when the decoder calls them for refinement), query and reference
# projections, and the two-stage proposal layers.
_PART_PATHS = {
    "backbone": "backbone",
    "input_projection": "input_proj",
    "encoder": "transformer.encoder",
    "decoder": "transformer.decoder.layers",
}
_OP_NAME = "ddetr.ms_deform_attn"


@dataclass
class FlopReport:
    """GFLOPs (multiply-adds / 1e9) of one forward, averaged over the counted pictures."""

    gflops: float
    parts: dict[str, float]  # PARTS -> GFLOPs; sums to gflops
    ms_deform_attn_gflops: float  # the deformable sampling alone (inside encoder and decoder)
    by_op: dict[str, float]  # aten/custom op name -> GFLOPs
    sizes: list[tuple[int, int]] = field(default_factory=list)  # distinct (h, w) counted
    n_images: int = 1
    convention: str = CONVENTION

    def to_dict(self) -> dict:
        return {
            "gflops": round(self.gflops, 3),
            "convention": self.convention,
            "parts": {k: round(v, 3) for k, v in self.parts.items()},
            "ms_deform_attn_gflops": round(self.ms_deform_attn_gflops, 4),
            "by_op": {k: round(v, 4) for k, v in self.by_op.items()},
            "n_images": self.n_images,
            "sizes": [list(s) for s in self.sizes],
        }


@contextmanager
def _no_grad_params(model: nn.Module) -> Iterator[None]:
    """Parameters temporarily without requires_grad: FlopCounterMode's module tracker hooks
    every input that requires grad, and views of trainable parameters made under no_grad
    (e.g. the query embedding split) break it."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _part_total(counts: dict[str, dict], root: str, path: str) -> int:
    """FLOPs under ``root.path``: the counter attributes every op to all enclosing modules,
    so sum only the outermost module paths found under the prefix."""
    prefix = f"{root}.{path}"
    keys = [k for k in counts if k == prefix or k.startswith(prefix + ".")]
    outermost = [k for k in keys if not any(k != o and k.startswith(o + ".") for o in keys)]
    return sum(sum(counts[k].values()) for k in outermost)


def _count_once(model: nn.Module, h: int, w: int, device: torch.device) -> tuple[int, dict, dict]:
    """(torch FLOPs, part -> torch FLOPs, op -> torch FLOPs) of one forward on one picture."""
    image = torch.zeros(1, 3, h, w, device=device)
    with _no_grad_params(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    root = type(model).__name__
    parts = {name: _part_total(counts, root, path) for name, path in _PART_PATHS.items()}
    parts["heads"] = total - sum(parts.values())
    by_op = {str(op): n for op, n in counts.get("Global", {}).items()}
    return total, parts, by_op


def _meta_copy(model: nn.Module) -> nn.Module:
    # Seeding deepcopy's memo with meta stand-ins copies the module tree without its weights.
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    meta = copy.deepcopy(model, memo).eval()
    if hasattr(meta, "set_attention_backend"):
        # FLOPs do not depend on the backend; the reference one needs no kernel probe.
        meta.set_attention_backend("reference")
    return meta


def _count_all(
    model: nn.Module, device: torch.device, weights: Counter
) -> tuple[float, Counter, Counter]:
    total = 0.0
    parts: Counter = Counter()
    by_op: Counter = Counter()
    for (h, w), n in weights.items():
        t, p, o = _count_once(model, h, w, device)
        total += t * n
        parts.update({k: v * n for k, v in p.items()})
        by_op.update({k: v * n for k, v in o.items()})
    return total, parts, by_op


def count_flops(model: nn.Module, sizes: Sequence[tuple[int, int]]) -> FlopReport:
    """Average GFLOPs (multiply-adds) of one single-picture forward over ``sizes`` (one per
    picture, repeats allowed: each distinct size is counted once and weighted)."""
    if not sizes:
        raise ValueError("count_flops needs at least one picture size")
    weights = Counter((int(h), int(w)) for h, w in sizes)
    try:
        total, parts, by_op = _count_all(_meta_copy(model), torch.device("meta"), weights)
    except Exception as exc:  # some module cannot run on meta: count with real tensors instead
        log.debug("FLOPs on the meta device failed (%s); counting on the model's device", exc)
        was_training = model.training
        try:
            device = next(model.parameters()).device
            total, parts, by_op = _count_all(model.eval(), device, weights)
        finally:
            model.train(was_training)
    scale = 2e9 * len(sizes)  # torch FLOPs -> multiply-adds, averaged, in G
    return FlopReport(
        gflops=total / scale,
        parts={k: parts[k] / scale for k in PARTS},
        ms_deform_attn_gflops=by_op.get(_OP_NAME, 0) / scale,
        by_op={k: v / scale for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
        sizes=sorted(weights),
        n_images=len(sizes),
    )
