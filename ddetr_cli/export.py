"""``ddetr export``: the detector as one ONNX file, checked against PyTorch when written.

The graph takes ``images`` (N, 3, H, W) float32, normalised like the evaluation transform, with
no padding (so every mask is constant False and the graph needs no mask input), and returns the
model's ``pred_logits`` (N, Q, C) and ``pred_boxes`` (N, Q, 4; cx, cy, w, h in [0, 1]), or with
``postprocess`` the official top-k: ``scores``, ``labels`` and ``boxes`` (x0, y0, x1, y1 in
input pixels). N, H and W are dynamic unless ``static``.

Every ``ddetr::ms_deform_attn`` becomes standard ONNX operators through the translation in
:mod:`ddetr_cli.ops.onnx`, given to torch.onnx's dynamo exporter as its
``custom_translation_table``. Class names, the resolved recipe and the input normalisation go
into the file's ``metadata_props``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddetr_cli.errors import DdetrError
from ddetr_cli.extras import EXTRAS, require

DEFAULT_OPSET = 18
MIN_OPSET = 16  # GridSample (the gridsample sampler); the gather translation needs 13
LOGITS_TOLERANCE = 1e-4
# Boxes are compared as fractions of the picture (cx, cy, w, h in [0, 1]; post-processed pixel
# boxes divided by the longer side): 1e-4 of 1333 pixels is 0.13 pixel.
BOXES_TOLERANCE = 1e-4
METADATA_PREFIX = "ddetr."
FORMAT_VERSION = "1"
RAW_OUTPUTS = ("pred_logits", "pred_boxes")
POSTPROCESS_OUTPUTS = ("scores", "labels", "boxes")


def require_export_extra(*modules: str) -> None:
    """DdetrError naming the extra to install when an export dependency is missing."""
    for name in modules or EXTRAS["export"]:
        require(name, "export")


# --------------------------------------------------------------------------- the traced module


class ExportWrapper(nn.Module):
    """The detector on one unpadded batch tensor; plain tensors out, optionally post-processed.

    ``post_process`` in ``ddetr_cli.model`` returns per-picture lists; here the same top-k runs
    batched, with boxes scaled to the input's own pixels (the graph knows no original size).
    """

    def __init__(self, model: nn.Module, postprocess: bool = False, num_detections: int = 100):
        super().__init__()
        self.model = model
        self.postprocess = postprocess
        self.num_detections = num_detections

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        logits, boxes = out["pred_logits"], out["pred_boxes"]
        if not self.postprocess:
            return logits, boxes
        height, width = images.shape[-2], images.shape[-1]
        return topk_detections(logits, boxes, height, width, self.num_detections)


def topk_detections(
    logits: Tensor, boxes: Tensor, height: Any, width: Any, num_detections: int = 100
) -> tuple[Tensor, Tensor, Tensor]:
    """``post_process``'s top-k, batched: scores, labels and xyxy boxes in (height, width)."""
    batch, queries, classes = logits.shape
    prob = logits.sigmoid().reshape(batch, queries * classes)
    k = min(num_detections, queries * classes)
    scores, index = torch.topk(prob, k, dim=1)
    query = torch.div(index, classes, rounding_mode="floor")
    labels = index % classes
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
    xyxy = torch.gather(xyxy, 1, query.unsqueeze(-1).expand(-1, -1, 4))
    full = [torch.full((), v, dtype=xyxy.dtype, device=xyxy.device) for v in (width, height)]
    return scores, labels, xyxy * torch.stack(full).repeat(2)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's optimiser logs notes such as "Skipping constant folding for op Split"
    as warnings: they are about its own passes, not about the user's model."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def probe_attention_backend(device: torch.device | str) -> None:
    """Resolve 'auto' once, eagerly and with autograd on: the kernel's availability probe runs a
    backward, which fails under no_grad and would be recorded if it first ran inside a trace."""
    from ddetr_cli.ops.backends import resolve_backend

    with torch.inference_mode(False), torch.enable_grad():
        resolve_backend(torch.device(device), None)


@contextlib.contextmanager
def _export_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, and the reference attention backend while tracing: the op is opaque to the
    exporter anyway, and resolving 'auto' probes the compiled kernel, whose smoke test must not
    run (and be recorded) inside the trace."""
    from ddetr_cli.model.attention import MSDeformAttn

    was_training = model.training
    saved = [(m, m.backend) for m in model.modules() if isinstance(m, MSDeformAttn)]
    model.eval()
    for module, _ in saved:
        module.backend = "reference"
    try:
        yield
    finally:
        for module, backend in saved:
            module.backend = backend
        model.train(was_training)


# --------------------------------------------------------------------------- reports


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


@dataclass
class ExportReport:
    path: Path
    opset: int
    sampler: str
    static: bool
    postprocess: bool
    image_size: tuple[int, int]
    batch_size: int
    inputs: list[str]
    outputs: list[str]
    size_mb: float
    export_seconds: float
    check: CheckResult | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        if self.check is not None:
            data["check"]["ok"] = self.check.ok
        return data


# --------------------------------------------------------------------------- export


def _metadata(
    recipe: dict[str, Any], sampler: str, static: bool, postprocess: bool, image_size, batch_size
) -> dict[str, str]:
    from ddetr_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    cfg = recipe["model"]
    names = cfg.get("class_names")
    if names is None and cfg["num_classes"] == 91:
        from ddetr_cli.coco_names import COCO_CLASS_NAMES

        names = list(COCO_CLASS_NAMES)
    data = recipe.get("data", {})
    return {
        "format_version": FORMAT_VERSION,
        "recipe": json.dumps(recipe, sort_keys=True, default=str),
        "class_names": json.dumps(names),
        "num_classes": str(cfg["num_classes"]),
        "inputs": json.dumps({"images": "float32 (N, 3, H, W), RGB, (x / 255 - mean) / std"}),
        "outputs": json.dumps(list(POSTPROCESS_OUTPUTS if postprocess else RAW_OUTPUTS)),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "eval_min_size": str(data.get("eval_min_size")),
        "eval_max_size": str(data.get("eval_max_size")),
        "static": json.dumps(static),
        "postprocess": json.dumps(postprocess),
        "num_detections": str(cfg.get("num_detections", 100)),
        "sampler": sampler,
        "export_image_size": json.dumps(list(image_size)),
        "export_batch_size": str(batch_size),
        "torch_version": torch.__version__,
    }


def export_onnx(
    model: nn.Module,
    recipe: dict[str, Any],
    out_path: str | Path,
    opset: int | None = None,
    image_size: tuple[int, int] = (800, 1066),
    batch_size: int = 1,
    static: bool = False,
    postprocess: bool = False,
    sampler: str | None = None,
    check: bool = True,
    check_image_size: tuple[int, int] | None = None,
    check_batch_size: int | None = None,
    tolerance: float = LOGITS_TOLERANCE,
) -> ExportReport:
    """Write ``model`` as ONNX to ``out_path``, then (``check``) run the file in onnxruntime at
    another picture size and batch and compare with ``model``; see :class:`ExportReport`.

    A dynamic export is traced at batch max(batch_size, 2) (torch.export fixes a dimension of
    size 1), H and W at ``image_size``.
    """
    require_export_extra()
    from ddetr_cli.ops.onnx import DEFAULT_SAMPLER, SAMPLERS, translation_table

    sampler = sampler or DEFAULT_SAMPLER
    if sampler not in SAMPLERS:
        raise DdetrError(f"sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < MIN_OPSET:
        raise DdetrError(f"--opset {opset}: need at least {MIN_OPSET}")
    height, width = (int(v) for v in image_size)
    if min(height, width) < 32 or batch_size < 1:
        raise DdetrError(f"export size {batch_size}x{height}x{width}: need H, W >= 32, batch >= 1")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    num_detections = int(recipe["model"].get("num_detections", 100))
    wrapper = ExportWrapper(model, postprocess, num_detections).eval()
    trace_batch = batch_size if static else max(batch_size, 2)
    example = torch.randn(trace_batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    device = next(iter(model.parameters())).device
    probe_attention_backend(device)
    example = example.to(device)
    dynamic_shapes = None
    if not static:
        dim = torch.export.Dim.DYNAMIC
        dynamic_shapes = {"images": {0: dim, 2: dim, 3: dim}}
    outputs = list(POSTPROCESS_OUTPUTS if postprocess else RAW_OUTPUTS)
    started = time.perf_counter()
    with _export_mode(model), torch.no_grad(), _quiet_exporter():
        try:
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=outputs,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=translation_table(sampler),
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:  # torch.onnx wraps everything in long multi-line errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DdetrError(f"ONNX export failed: {first[:300]}") from exc
    meta = _metadata(recipe, sampler, static, postprocess, (height, width), batch_size)
    for key, value in meta.items():
        program.model.metadata_props[METADATA_PREFIX + key] = value
    program.save(str(out_path))
    seconds = time.perf_counter() - started
    report = ExportReport(
        path=out_path,
        opset=opset,
        sampler=sampler,
        static=static,
        postprocess=postprocess,
        image_size=(height, width),
        batch_size=batch_size,
        inputs=["images"],
        outputs=outputs,
        size_mb=round(out_path.stat().st_size / 2**20, 2),
        export_seconds=round(seconds, 2),
    )
    if check:
        if static:
            check_image_size, check_batch_size = (height, width), batch_size
        report.check = check_onnx(
            out_path, model, check_image_size, check_batch_size, tolerance=tolerance
        )
    return report


# --------------------------------------------------------------------------- reading back


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``ddetr.*`` metadata of an exported file, prefix removed (values are strings)."""
    onnx = require("onnx", "export")

    model = onnx.load(str(path), load_external_data=False)
    return {
        p.key[len(METADATA_PREFIX) :]: p.value
        for p in model.metadata_props
        if p.key.startswith(METADATA_PREFIX)
    }


def ort_session(path: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
    """An onnxruntime InferenceSession: CUDA provider for a cuda device when present."""
    ort = require("onnxruntime", "export")

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DdetrError(
                "onnxruntime has no CUDA provider here: "
                "pip install onnxruntime-gpu, or use --device cpu"
            )
        index = torch.device(device).index or 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


def default_check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """A picture size the export never saw: about 5/4 the height and 4/5 the width, odd sizes."""
    h, w = image_size
    return (int(math.floor(h * 1.25)) | 1, max(33, int(math.floor(w * 0.8)) | 1))


def _topk_pairs(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    prob = logits.sigmoid().flatten(1)
    k = min(k, prob.shape[1])
    return torch.topk(prob, k, dim=1)


def compare_topk(ref: Tensor, other: Tensor, k: int = 100, tolerance: float = 1e-5) -> int:
    """How many of ``other``'s top-k (query, class) pairs per picture are not ``ref``'s, apart
    from near-ties at the cut-off (pairs whose reference score is within ``tolerance`` of the
    k-th). Order inside the top-k is not compared: ties may swap places."""
    ref_scores, ref_index = _topk_pairs(ref, k)
    _, other_index = _topk_pairs(other, k)
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
    all_scores, all_labels, all_boxes = topk_detections(ref_logits, ref_boxes, height, width, every)
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
        ref_scores = topk_detections(ref_logits, ref_boxes, height, width, scores.shape[1])[0]
        boxes_diff, mismatches = match_detections(
            (scores, labels, boxes), ref_logits, ref_boxes, (height, width), tolerance
        )
        return CheckResult(
            (height, width), batch_size, float((scores - ref_scores).abs().max()), boxes_diff,
            mismatches == 0, int(scores.shape[1]), mismatches, tolerance, onnx_seconds,
            torch_seconds,
        )  # fmt: skip
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
