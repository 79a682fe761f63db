"""The export's self-check: the ONNX file in onnxruntime against the PyTorch model on a batch of
another size, logits, boxes and top-k pairs compared."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ddetr_cli.export.runtime import ort_session, read_metadata
from ddetr_cli.model.postprocess import batched_detections, topk_pairs

LOGITS_TOLERANCE = 1e-4
# Boxes are compared as fractions of the picture (cx, cy, w, h in [0, 1]; post-processed pixel
# boxes divided by the longer side): 1e-4 of 1333 pixels is 0.13 pixel.
BOXES_TOLERANCE = 1e-4


def probe_attention_backend(device: torch.device | str) -> None:
    """Resolve 'auto' once, eagerly and with autograd on: the kernel's availability probe runs a
    backward, which fails under no_grad and would be recorded if it first ran inside a trace."""
    from ddetr_cli.ops.backends import resolve_backend

    with torch.inference_mode(False), torch.enable_grad():
        resolve_backend(torch.device(device), None)


@dataclass
class CheckResult:
    """onnxruntime against PyTorch on one random batch."""

    image_size: tuple[int, int]
    batch_size: int
    max_logits_diff: float
    max_boxes_diff: float
    same_topk: bool
    topk: int
    topk_mismatches: int
    tolerance: float = LOGITS_TOLERANCE
    onnx_seconds: float = 0.0
    torch_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    boxes_tolerance: float = BOXES_TOLERANCE

    @property
    def ok(self) -> bool:
        return (
            self.max_logits_diff <= self.tolerance
            and self.max_boxes_diff <= self.boxes_tolerance
            and self.same_topk
        )

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"check {verdict}: onnxruntime vs PyTorch at {self.batch_size}x3x"
            f"{self.image_size[0]}x{self.image_size[1]}: max |logits| diff "
            f"{self.max_logits_diff:.2e} (tolerance {self.tolerance:.0e}), max |boxes| diff "
            f"{self.max_boxes_diff:.2e} (tolerance {self.boxes_tolerance:.0e}), top-{self.topk} "
            + ("identical" if self.same_topk else f"differs ({self.topk_mismatches} detections)")
        )


def default_check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """A picture size the export never saw: about 5/4 the height and 4/5 the width, odd sizes."""
    h, w = image_size
    return (int(math.floor(h * 1.25)) | 1, max(33, int(math.floor(w * 0.8)) | 1))


def compare_topk(ref: Tensor, other: Tensor, k: int = 100, tolerance: float = 1e-5) -> int:
    """How many of ``other``'s top-k (query, class) pairs per picture are not ``ref``'s, apart
    from near-ties at the cut-off (pairs whose reference score is within ``tolerance`` of the
    k-th). Order inside the top-k is not compared: ties may swap places."""
    ref_scores, ref_index = topk_pairs(ref, k)
    _, other_index = topk_pairs(other, k)
    prob = ref.sigmoid().flatten(1)
    mismatches = 0
    for b in range(ref.shape[0]):
        cut = float(ref_scores[b, -1])
        extra = set(other_index[b].tolist()) - set(ref_index[b].tolist())
        mismatches += sum(1 for i in extra if abs(float(prob[b, i]) - cut) > tolerance)
    return mismatches


def match_detections(
    detections: tuple[Tensor, Tensor, Tensor],
    ref_logits: Tensor,
    ref_boxes: Tensor,
    image_size: tuple[int, int],
    tolerance: float = LOGITS_TOLERANCE,
) -> tuple[float, int]:
    """A post-processed export's (scores, labels, xyxy boxes) against the model's raw outputs:
    each detection must be one of the model's (query, class) pairs with that label, a score
    within ``tolerance`` (near-equal scores may swap places, also across the top-k's cut-off)
    and the nearest such box. Returns (the largest box difference of the matched detections, as
    a fraction of the picture's longer side; how many detections match no pair)."""
    scores, labels, boxes = detections
    height, width = image_size
    every = ref_logits.shape[1] * ref_logits.shape[2]
    everything = batched_detections(ref_logits, ref_boxes, height, width, every)
    all_scores, all_labels, all_boxes = everything
    worst, unmatched = 0.0, 0
    for b in range(scores.shape[0]):
        candidate = (scores[b, :, None] - all_scores[b, None, :]).abs() <= tolerance
        candidate &= labels[b, :, None] == all_labels[b, None, :]
        position, pair = candidate.nonzero(as_tuple=True)
        diff = (boxes[b, position] - all_boxes[b, pair]).abs().amax(-1) / max(height, width)
        nearest = torch.full((scores.shape[1],), math.inf, dtype=diff.dtype)
        nearest = nearest.scatter_reduce(0, position, diff, "amin")
        matched = torch.isfinite(nearest)
        unmatched += int((~matched).sum())
        if matched.any():
            worst = max(worst, float(nearest[matched].max()))
    return worst, unmatched


@torch.no_grad()
def check_onnx(
    path: str | Path,
    model: nn.Module,
    image_size: tuple[int, int] | None = None,
    batch_size: int | None = None,
    tolerance: float = LOGITS_TOLERANCE,
    num_detections: int = 100,
    seed: int = 1,
) -> CheckResult:
    """Run ``path`` in onnxruntime (CPU) and ``model`` in PyTorch on the same random batch and
    compare: max |logits| and |boxes| differences and the top-``num_detections`` pairs.

    Defaults: for a dynamic export a size and batch it was not exported at; for a static one its
    own. A post-processed export is compared on its ``scores``/``labels``/``boxes`` (see
    ``match_detections``).
    """
    meta = read_metadata(path)
    static = json.loads(meta.get("static", "false"))
    export_size = tuple(json.loads(meta.get("export_image_size", "[800, 1066]")))
    export_batch = int(meta.get("export_batch_size", "1"))
    postprocess = json.loads(meta.get("postprocess", "false"))
    if image_size is None:
        image_size = export_size if static else default_check_size(export_size)
    if batch_size is None:
        batch_size = export_batch if static else max(export_batch, 2) + 1
    height, width = image_size
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, height, width, generator=generator)
    session = ort_session(path)
    started = time.perf_counter()
    outputs = session.run(None, {"images": images.numpy()})
    onnx_seconds = time.perf_counter() - started
    device = next(iter(model.parameters())).device
    probe_attention_backend(device)
    was_training = model.training
    model.eval()
    try:
        started = time.perf_counter()
        ref = model(images.to(device))
        torch_seconds = time.perf_counter() - started
    finally:
        model.train(was_training)
    ref_logits = ref["pred_logits"].float().cpu()
    ref_boxes = ref["pred_boxes"].float().cpu()
    k = min(num_detections, ref_logits.shape[1] * ref_logits.shape[2])
    if postprocess:
        scores, labels, boxes = (torch.from_numpy(o) for o in outputs)
        ref_scores = batched_detections(ref_logits, ref_boxes, height, width, scores.shape[1])[0]
        boxes_diff, mismatches = match_detections(
            (scores, labels, boxes), ref_logits, ref_boxes, (height, width), tolerance
        )
        return CheckResult(
            (height, width),
            batch_size,
            float((scores - ref_scores).abs().max()),
            boxes_diff,
            mismatches == 0,
            int(scores.shape[1]),
            mismatches,
            tolerance,
            onnx_seconds,
            torch_seconds,
        )
    logits = torch.from_numpy(outputs[0])
    boxes = torch.from_numpy(outputs[1])
    mismatches = compare_topk(ref_logits, logits, k)
    return CheckResult(
        image_size=(height, width),
        batch_size=batch_size,
        max_logits_diff=float((logits - ref_logits).abs().max()),
        max_boxes_diff=float((boxes - ref_boxes).abs().max()),
        same_topk=mismatches == 0,
        topk=k,
        topk_mismatches=mismatches,
        tolerance=tolerance,
        onnx_seconds=onnx_seconds,
        torch_seconds=torch_seconds,
    )
