"""``ddetr export``: the detector as ONNX, checked in onnxruntime when written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddetr_cli.cli.console import print_line, stderr
from ddetr_cli.cli.options import Device, JsonOut, Overrides, Recipe, Weights
from ddetr_cli.errors import DdetrError, UsageError

# The options of `ddetr export` alone (the shared ones are in cli/options.py).
OnnxFile = Annotated[
    Path, typer.Option("--out", "-o", help="The ONNX file to write.", show_default=False)
]
Opset = Annotated[int | None, typer.Option("--opset", help="ONNX opset (default 18; at least 16).")]
ExampleSize = Annotated[
    tuple[int, int] | None,
    typer.Option(
        "--image-size",
        metavar="H W",
        help="H W of the example batch (the only size if --static); default: a 480x640 "
        "picture after the recipe's evaluation resize (800 1066 for COCO recipes).",
        show_default=False,
    ),
]
ExampleBatch = Annotated[
    int, typer.Option("--batch-size", "-b", help="Example batch (the only batch if --static).")
]
Static = Annotated[
    bool, typer.Option("--static", help="Fix batch, height and width to the example's.")
]
Postprocess = Annotated[
    bool,
    typer.Option(
        "--postprocess",
        help="Output the top-k scores, labels and boxes (x0 y0 x1 y1, input pixels) instead "
        "of pred_logits and pred_boxes.",
    ),
]
Sampler = Annotated[
    str,
    typer.Option(
        "--sampler",
        help="Deformable attention sampling in the graph: gridsample (faster in "
        "onnxruntime) or gather (no GridSample: for TensorRT and opset < 16 runtimes).",
    ),
]
Check = Annotated[
    bool,
    typer.Option(
        "--check/--no-check",
        help="Run the file in onnxruntime at another size and batch and compare with PyTorch.",
    ),
]


def export(
    overrides: Overrides = None,
    weights: Weights = ...,  # type: ignore[assignment]
    recipe: Recipe = None,
    out: OnnxFile = ...,  # type: ignore[assignment]
    opset: Opset = None,
    image_size: ExampleSize = None,
    batch_size: ExampleBatch = 1,
    static: Static = False,
    postprocess: Postprocess = False,
    sampler: Sampler = "gridsample",
    check: Check = True,
    device: Device = "cpu",
    json_out: JsonOut = None,
) -> None:
    """Export the detector to ONNX, then check the file against PyTorch in onnxruntime.

    Input `images`: float32 (N, 3, H, W), RGB normalised like the evaluation transform
    ((x / 255 - mean) / std, ImageNet statistics), unpadded; N, H and W dynamic unless --static.
    Outputs `pred_logits` (N, Q, C) and `pred_boxes` (N, Q, 4: cx cy w h in 0..1), or with
    --postprocess `scores`, `labels`, `boxes`. The deformable attention is standard ONNX operators
    (no custom domain); class names and the recipe are in the file's metadata. After writing,
    the file runs in onnxruntime on pictures of another size and batch; the command fails (exit
    1) if max |logits| differs by more than 1e-4 or the top-100 detections differ.

    Examples:
      ddetr export -w r50_deformable_detr.pth -o deformable_detr.onnx
      ddetr export -w runs/shapes -o shapes.onnx
      ddetr export -w model.pth -o model_b1.onnx --static --batch-size 1 --postprocess
      ddetr predict -w shapes.onnx pictures/
    """
    from ddetr_cli.data.transforms import eval_size
    from ddetr_cli.export.runtime import require_export_extra
    from ddetr_cli.export.writer import export_onnx
    from ddetr_cli.files import write_json
    from ddetr_cli.runtime import resolve_device
    from ddetr_cli.weights import resolve_model

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if image_size is not None and min(image_size) < 32:
        h, w = image_size
        raise UsageError(f"--image-size must be at least 32 32, got {h} {w}")
    if sampler not in ("gridsample", "gather"):
        raise UsageError(f"--sampler {sampler!r}: choose gridsample or gather")
    if str(weights).endswith(".onnx"):
        raise UsageError(f"--weights {weights}: already ONNX; export from a checkpoint")
    require_export_extra()
    dev = resolve_device(device)
    model, resolved = resolve_model(weights, recipe, overrides or [], str(dev))
    if image_size is None:
        data = resolved["data"]
        image_size = eval_size(480, 640, data["eval_min_size"], data["eval_max_size"])
    print_line(f"exporting {weights} to {out} at {image_size[0]}x{image_size[1]} ...", stderr)
    report = export_onnx(
        model,
        resolved,
        out,
        opset=opset,
        image_size=tuple(image_size),
        batch_size=batch_size,
        static=static,
        postprocess=postprocess,
        sampler=sampler,
        check=check,
    )
    shape = "static" if static else "dynamic N, H, W"
    print_line(
        f"wrote {report.path} ({report.size_mb} MB, opset {report.opset}, {shape}, sampler "
        f"{report.sampler}, outputs {', '.join(report.outputs)}) in {report.export_seconds:.0f} s"
    )
    if json_out is not None:
        write_json(report.to_json(), json_out, indent=2)
    if report.check is not None:
        if not report.check.ok:
            raise DdetrError(report.check.line())
        print_line(report.check.line())
