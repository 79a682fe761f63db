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
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddetr_cli.errors import DdetrError
from ddetr_cli.export.check import (
    LOGITS_TOLERANCE,
    CheckResult,
    check_onnx,
    probe_attention_backend,
)
from ddetr_cli.export.runtime import METADATA_PREFIX, require_export_extra
from ddetr_cli.model.postprocess import batched_detections

DEFAULT_OPSET = 18
MIN_OPSET = 16  # GridSample (the gridsample sampler); the gather translation needs 13
FORMAT_VERSION = "1"
RAW_OUTPUTS = ("pred_logits", "pred_boxes")
POSTPROCESS_OUTPUTS = ("scores", "labels", "boxes")


# --------------------------------------------------------------------------- the traced module


class ExportWrapper(nn.Module):
    """The detector on one unpadded batch tensor; plain tensors out, optionally post-processed.

    ``post_process`` returns per-picture lists; here the same top-k runs batched
    (``batched_detections``), boxes in the input's own pixels (the graph knows no original size).
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
        return batched_detections(logits, boxes, height, width, self.num_detections)


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
        from ddetr_cli.data.class_names import COCO_CLASS_NAMES

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
