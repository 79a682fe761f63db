"""`ddetr bench`: parameters, FLOPs and inference speed of a model, measured one stated way.

Speed protocol (the official benchmark.py's): one picture replicated to the batch size, a few
warm-up iterations, then timed iterations with the device synchronised (CUDA events per iteration
on GPU, perf_counter on CPU). FPS = pictures / timed seconds. Every setting is in the report.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ddetr_cli.bench.backends import (
    backends_to_time,
    check_backend_choice,
    check_dtype_names,
    check_dtypes_on,
    speedups,
)
from ddetr_cli.bench.flops import count_flops
from ddetr_cli.bench.machine import machine_info
from ddetr_cli.bench.timing import percentile, time_forward
from ddetr_cli.errors import DdetrError, UsageError
from ddetr_cli.model.protocol import Detector
from ddetr_cli.model.variants import describe_model
from ddetr_cli.runtime import amp_autocast

if TYPE_CHECKING:
    from ddetr_cli.inference.slicing import SliceOptions
# COCO val2017's first picture; after the 800/1333 evaluation resize it is 800x1199, as the
# official benchmark feeds it.
COCO_FIRST_PICTURE = (427, 640)
OFFICIAL_WARMUP, OFFICIAL_ITERS = 5, 295
# The official 300 iterations take ~15 minutes per setting on a small CPU: fewer by default there.
CPU_WARMUP, CPU_ITERS = 1, 10
PAPER_MAX_IMAGES = 100  # the DETR papers average FLOPs over the first 100 val2017 pictures


@dataclass
class BenchOptions:
    """What to measure and how; None means the device's default (see resolve_protocol)."""

    device: str = "cpu"
    flops: bool = True
    fps: bool = False
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    image_size: tuple[int, int] | None = None
    images: Path | None = None
    max_images: int = PAPER_MAX_IMAGES
    compile: bool = False
    attention_backend: str = "all"
    warmup: int | None = None
    iters: int | None = None
    threads: int | None = None
    slicing: SliceOptions | None = None  # time sliced pictures (bench.sliced) too


@dataclass
class SpeedResult:
    backend: str
    dtype: str
    mode: str  # "eager" or "compile"
    batch_size: int
    fps: float | None = None
    latency_ms_p50: float | None = None  # per batch
    latency_ms_p90: float | None = None
    latency_ms_mean: float | None = None
    peak_memory_mib: float | None = None  # CUDA only (torch.cuda.max_memory_allocated)
    first_iteration_s: float | None = None  # includes compilation in "compile" mode
    speedup_vs_reference: float | None = None
    error: str | None = None


# --------------------------------------------------------------------------- model and inputs


def build_bench_model(
    weights: str | Path | None, recipe_path: Path | None, overrides: Sequence[str]
) -> tuple[Detector, dict[str, Any], str]:
    """(model in eval mode on the CPU, resolved recipe, where it came from).

    Without weights the model is built from the recipe (default: the built-in defaults, which are
    the plain multi-scale R50 model) with random weights: weights change neither FLOPs nor speed,
    so ImageNet weights are never downloaded for a benchmark.
    """
    from ddetr_cli.weights import resolve_model

    model, recipe = resolve_model(weights, recipe_path, overrides, "cpu")
    if weights is not None:
        return model, recipe, str(weights)
    source = str(recipe_path) if recipe_path is not None else "built-in defaults"
    return model, recipe, f"{source}, random weights"


def default_size(recipe: dict[str, Any]) -> tuple[int, int]:
    """The picture size to measure when none is given: the model's own evaluation resize of a
    typical picture of its data (COCO val2017's first, 427x640, for COCO-sized models: 800x1199
    at the official 800/1333; the shapes pictures for the shapes demo)."""
    from ddetr_cli.data.shapes import IMAGE_SIZE
    from ddetr_cli.data.transforms import eval_size

    data = recipe["data"]
    h, w = (IMAGE_SIZE, IMAGE_SIZE) if data["format"] == "shapes" else COCO_FIRST_PICTURE
    return eval_size(h, w, data["eval_min_size"], data["eval_max_size"])


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts; shared modules are counted once, as the official."""
    params = list(model.parameters())  # deduplicated by nn.Module
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def folder_inputs(
    folder: Path, max_images: int, min_size: int, max_size: int
) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Evaluation-transform sizes of a folder's first ``max_images`` pictures (sorted by name)
    and the first one, transformed, for the speed runs."""
    from ddetr_cli.data.pictures import list_images, load_image
    from ddetr_cli.data.transforms import eval_size, eval_transform

    if not folder.is_dir():
        raise DdetrError(f"--images {folder}: not a folder")
    paths = list_images([folder])[:max_images]
    sizes = []
    first = None
    for path in paths:
        image = load_image(path)
        if first is None:
            first = eval_transform(image, min_size, max_size)
        sizes.append(eval_size(image.shape[-2], image.shape[-1], min_size, max_size))
    return sizes, first


# --------------------------------------------------------------------------- backends and timing


def resolve_protocol(options: BenchOptions, device: torch.device) -> tuple[int, int]:
    """(warm-up, timed) iterations: the official 5/295 on GPU, fewer on CPU unless asked."""
    default_warmup, default_iters = (
        (CPU_WARMUP, CPU_ITERS) if device.type == "cpu" else (OFFICIAL_WARMUP, OFFICIAL_ITERS)
    )
    warmup = default_warmup if options.warmup is None else options.warmup
    iters = default_iters if options.iters is None else options.iters
    return warmup, iters


def measure_speed(
    model: Detector,
    picture: torch.Tensor,
    device: torch.device,
    dtype: str,
    batch_size: int,
    warmup: int,
    iters: int,
    compiled: bool = False,
) -> SpeedResult:
    """Time the model on ``picture`` (3, H, W) replicated ``batch_size`` times.

    fp32 runs the model as is; bf16/fp16 run it under torch.autocast (as mixed-precision
    inference is usually deployed: matmuls and convs in half precision, norms in fp32); the
    name is checked beforehand (``bench.backends.check_dtypes``).
    """
    result = SpeedResult(
        backend="", dtype=dtype, mode="compile" if compiled else "eager", batch_size=batch_size
    )
    batch = picture.to(device)[None].expand(batch_size, -1, -1, -1).contiguous()
    runner: Callable[..., Any] = model
    if compiled:
        torch._dynamo.reset()  # a fresh graph per setting: no recompilation or dynamic shapes
        runner = torch.compile(model, dynamic=False)

    def forward() -> Any:
        with torch.inference_mode(), amp_autocast(device, dtype):
            return runner(batch)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        latencies, total, first = time_forward(forward, device, warmup, iters)
    except torch.OutOfMemoryError:
        result.error = "out of memory"
        return result
    except Exception as exc:
        if not compiled:
            raise
        # torch.compile failures (no C++ compiler, an unsupported op) are reported, not fatal.
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        result.error = f"torch.compile failed: {line[:200]}"
        return result
    result.fps = batch_size * iters / total
    result.latency_ms_p50 = percentile(latencies, 50) * 1e3
    result.latency_ms_p90 = percentile(latencies, 90) * 1e3
    result.latency_ms_mean = float(np.mean(latencies)) * 1e3
    result.first_iteration_s = first
    if device.type == "cuda":
        result.peak_memory_mib = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


# --------------------------------------------------------------------------- the whole report


def check_options(options: BenchOptions) -> None:
    """UsageError for option values that make no sense on any device."""
    if options.image_size is not None and options.images is not None:
        raise UsageError("give either --image-size or --images, not both")
    if options.image_size is not None and min(options.image_size) < 32:
        raise UsageError(f"--image-size must be at least 32 32, got {options.image_size}")
    if not options.batch_sizes or min(options.batch_sizes) < 1:
        raise UsageError(f"--batch-size values must be at least 1, got {options.batch_sizes}")
    check_dtype_names(options.dtypes)
    check_backend_choice(options.attention_backend)
    if options.max_images < 1:
        raise UsageError(f"--max-images must be at least 1, got {options.max_images}")
    if options.compile and options.warmup == 0:
        raise UsageError("--compile needs --warmup of at least 1 (the first call compiles)")
    if options.threads is not None and options.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {options.threads}")
    if (options.warmup is not None and options.warmup < 0) or (
        options.iters is not None and options.iters < 1
    ):
        raise UsageError(
            f"need --warmup >= 0 and --iters >= 1, got {options.warmup}, {options.iters}"
        )


def _fixed_runtime_options(options: BenchOptions) -> BenchOptions:
    """What can be measured of a detector that runs as it is (an ONNX file): its speed as
    exported (fp32, no torch.compile); FLOPs and parameters belong to its source weights."""
    if options.compile or set(options.dtypes) != {"fp32"}:
        raise UsageError(
            "an ONNX file runs as exported: fp32 and no --compile (bench its source weights "
            "for other dtypes and torch.compile)"
        )
    return dataclasses.replace(options, flops=False, fps=options.fps or options.slicing is None)


def bench_weights(
    weights: str | Path | None,
    recipe_path: Path | None,
    overrides: Sequence[str],
    options: BenchOptions,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``ddetr bench``: the options checked before the model is built (see
    ``build_bench_model``), then measured; returns the JSON-ready report."""
    check_options(options)
    model, recipe, source = build_bench_model(weights, recipe_path, overrides)
    return _measure(model, recipe, source, options, progress)


def run_bench(
    model: Detector,
    recipe: dict[str, Any],
    source: str,
    options: BenchOptions,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure what ``options`` asks for of ``model``; returns the JSON-ready report."""
    check_options(options)
    return _measure(model, recipe, source, options, progress)


def _bench_inputs(
    recipe: dict[str, Any], options: BenchOptions
) -> tuple[list[tuple[int, int]], torch.Tensor, dict[str, Any]]:
    """(picture sizes to count FLOPs at, the picture to time, what the report says of them)."""
    if options.images is not None:
        data = recipe["data"]
        sizes, picture = folder_inputs(
            options.images, options.max_images, data["eval_min_size"], data["eval_max_size"]
        )
        inputs = {"images": str(options.images), "n_images": len(sizes)}
    else:
        size = options.image_size or default_size(recipe)
        sizes = [tuple(size)]
        # A fixed random picture: content does not change the work done.
        picture = torch.randn(3, *size, generator=torch.Generator().manual_seed(0))
        inputs = {"image_size": list(size)}
    inputs["speed_picture_size"] = list(picture.shape[-2:])
    return sizes, picture, inputs


def _measure(
    model: Detector,
    recipe: dict[str, Any],
    source: str,
    options: BenchOptions,
    progress: Callable[[str], None] | None,
) -> dict[str, Any]:
    from ddetr_cli import __version__
    from ddetr_cli.runtime import resolve_device

    say = progress or (lambda _msg: None)
    fixed = model.fixed_runtime()
    if fixed is not None:
        options = _fixed_runtime_options(options)
    device = resolve_device(options.device)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    check_dtypes_on(options.dtypes, device)
    sizes, picture, inputs = _bench_inputs(recipe, options)
    total, trainable = count_params(model) if fixed is None else (None, None)
    report: dict[str, Any] = {
        "ddetr_version": __version__,
        "model": {"source": source, "description": describe_model(recipe)},
        "machine": machine_info(device),
        "inputs": inputs,
        "params": total,
        "params_trainable": trainable,
        "gflops": None,
        "flops": None,
        "speed": None,
    }
    if options.flops:
        say(f"counting FLOPs over {len(sizes)} picture size(s)")
        flops = count_flops(model, sizes)
        report["gflops"] = round(flops.gflops, 3)
        report["flops"] = flops.to_dict()
    if options.fps:
        backends = [fixed] if fixed else backends_to_time(device, options.attention_backend)
        report["speed"] = _run_speed(model, picture, device, options, backends, say)
    if options.slicing is not None:
        report["slice"] = _run_sliced(model, recipe, device, options, say)
    return report


def _run_sliced(
    model: nn.Module,
    recipe: dict[str, Any],
    device: torch.device,
    options: BenchOptions,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """bench.sliced on the first picture of --images as it is, or a random picture of
    --image-size (default: bench.sliced.DEFAULT_PICTURE)."""
    from ddetr_cli.bench.sliced import DEFAULT_PICTURE, random_picture, sliced_speed
    from ddetr_cli.data.pictures import list_images, load_image

    if options.images is not None:
        picture = load_image(list_images([options.images])[0])
    else:
        picture = random_picture(options.image_size or DEFAULT_PICTURE)
    warmup, iters = resolve_protocol(options, device)
    model = model.to(device).eval().optimize_for_inference()
    say(f"timing sliced pictures, batches of {', '.join(map(str, options.batch_sizes))} tiles")
    return sliced_speed(
        model,
        recipe,
        picture,
        options.slicing,
        device,
        options.batch_sizes,
        warmup,
        iters,
        options.dtypes[0],
    )


def _run_speed(
    model: Detector,
    picture: torch.Tensor,
    device: torch.device,
    options: BenchOptions,
    backends: list[tuple[str, str]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    warmup, iters = resolve_protocol(options, device)
    modes = [False, True] if options.compile else [False]
    # Our own copy: switching backends must not change the caller's model.
    model = copy.deepcopy(model).to(device).eval().optimize_for_inference()
    results: list[SpeedResult] = []
    for backend, _reason in backends:
        model.set_attention_backend(backend)
        for dtype in options.dtypes:
            for compiled in modes:
                for batch_size in options.batch_sizes:
                    mode = "compile" if compiled else "eager"
                    say(f"timing {backend} {dtype} {mode} batch {batch_size}")
                    result = measure_speed(
                        model, picture, device, dtype, batch_size, warmup, iters, compiled
                    )
                    result.backend = backend
                    results.append(result)
    gains = speedups(
        results,
        setting=lambda r: (r.dtype, r.mode, r.batch_size),
        speed=lambda r: r.fps,
        backend=lambda r: r.backend,
    )
    for result, gain in zip(results, gains, strict=True):
        result.speedup_vs_reference = gain
    return {
        "protocol": {
            "warmup_iterations": warmup,
            "timed_iterations": iters,
            "input": "one picture replicated to the batch size",
            "timing": (
                "CUDA events per iteration, device synchronised"
                if device.type == "cuda"
                else "time.perf_counter per iteration (CPU)"
            ),
            "fps": "pictures / timed seconds",
            "latency": "per batch, milliseconds",
            "half_precision": "torch.autocast (fp32 weights)",
            "device": str(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
        },
        "backends": {name: reason for name, reason in backends},
        "results": [_rounded(asdict(r)) for r in results],
    }
