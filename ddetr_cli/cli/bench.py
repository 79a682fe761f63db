"""``ddetr bench [model]``, ``ddetr bench op`` and ``ddetr bench train``: options in, one call,
tables out."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ddetr_cli.cli.console import ErrorReportingGroup, group, print_line, stderr, stdout
from ddetr_cli.cli.options import (
    Device,
    JsonOut,
    OptionalWeights,
    Overrides,
    Recipe,
    describe_slicing,
    with_slicing,
)
from ddetr_cli.errors import UsageError
from ddetr_cli.files import write_json


class _BenchGroup(ErrorReportingGroup):
    """`ddetr bench ...` runs the model benchmark unless the first word names a sub-command,
    so `ddetr bench --fps model.two_stage=true` and `ddetr bench op` both work;
    `ddetr bench --train ...` is `ddetr bench train ...`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and "--train" in args:
            args = ["train", *(a for a in args if a != "--train")]
        if not args or args[0] not in self.commands:
            args = ["model", *args]
        return super().parse_args(ctx, args)


bench_app = group(
    "Benchmarks: the model (`ddetr bench \\[model] ...`), a training step (`ddetr bench "
    "--train`) and the attention op (`ddetr bench op`).",
    cls=_BenchGroup,
)

# Options both benchmarks take.
Threads = Annotated[int | None, typer.Option(help="CPU threads for torch.")]
TimedBackends = Annotated[
    str, typer.Option(help="all (each available one, side by side), auto, reference or kernel.")
]

PARTS_LABELS = {
    "backbone": "backbone",
    "input_projection": "input projection",
    "encoder": "encoder",
    "decoder": "decoder",
    "heads": "heads (+ query/reference/proposal layers)",
}


def _split_list(values: list[str] | None, option: str) -> list[str]:
    """'-b 1 -b 4' and '-b 1,4' both give ['1', '4']."""
    items = [v.strip() for value in values or [] for v in value.split(",") if v.strip()]
    if values and not items:
        raise UsageError(f"{option}: empty value")
    return items


def _ints(values: list[str], option: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UsageError(f"{option}: expected whole numbers, got {','.join(values)}") from None


def _write_report(report: dict[str, Any], json_out: Path | None) -> None:
    """The report as JSON, with the command that repeats it, when --json asks for it."""
    if json_out is not None:
        report["command"] = "ddetr " + shlex.join(sys.argv[1:])
        write_json(report, json_out, indent=2)
        print_line(f"report: {json_out}")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict[str, Any], console: Console) -> None:
    """The report as rich tables: model and params, FLOPs by part, speed."""
    summary = Table(title="ddetr bench", show_header=False, title_justify="left")
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(overflow="fold")
    model = report["model"]
    summary.add_row("model", Text(f"{model['description']}; {model['source']}"))
    machine = report["machine"]
    where = machine.get("gpu") or f"{machine['cpu']} ({machine['torch_threads']} threads)"
    summary.add_row("machine", f"{where}; torch {machine['torch']}")
    if report["params"] is not None:  # None for an ONNX file: see its source weights
        params = f"{report['params']:,} ({report['params_trainable']:,} trainable)"
        summary.add_row("params", params)
    flops = report.get("flops")
    if flops:
        sizes = flops["sizes"]
        over = (
            f"{sizes[0][0]}x{sizes[0][1]}"
            if flops["n_images"] == 1
            else f"mean of {flops['n_images']} pictures ({len(sizes)} sizes)"
        )
        summary.add_row("GFLOPs", f"{flops['gflops']:.1f} at {over}")
        summary.add_row("convention", flops["convention"])
    console.print(summary)

    if flops:
        parts = Table(title="FLOPs by part", title_justify="left")
        parts.add_column("part")
        parts.add_column("GFLOPs", justify="right")
        parts.add_column("share", justify="right")
        share = flops["ms_deform_attn_gflops"]
        for key, label in PARTS_LABELS.items():
            value = flops["parts"][key]
            parts.add_row(label, f"{value:.2f}", f"{100 * value / flops['gflops']:.1f}%")
            if key == "decoder":  # the sampling runs inside the encoder and decoder layers
                parts.add_row(
                    Text("  deformable sampling (in encoder + decoder)", style="italic"),
                    f"{share:.2f}",
                    f"{100 * share / flops['gflops']:.1f}%",
                )
        parts.add_row(Text("total", style="bold"), f"{flops['gflops']:.2f}", "100%")
        console.print(parts)

    speed = report.get("speed")
    if speed:
        _print_speed(speed, console)
    if report.get("slice"):
        _print_sliced(report["slice"], console)


def _print_sliced(sliced: dict[str, Any], console: Console) -> None:
    """The sliced timing: pictures and tiles per second at each batch of tiles."""
    h, w = sliced["picture_size"]
    protocol = sliced["protocol"]
    tiles = describe_slicing(
        {**sliced["options"], "tiles_per_picture": sliced["tiles_per_picture"]}
    )
    table = Table(
        title=f"sliced {h}x{w} picture, tiles: {tiles}",
        caption=f"{protocol['device']}, {sliced['dtype']}: {protocol['warmup_pictures']} warm-up "
        f"+ {protocol['timed_pictures']} timed pictures; timed: {protocol['timed']}; gain = "
        "pictures/s over batch 1 (tiles one by one)",
        title_justify="left",
        caption_justify="left",
    )
    for name in ("tiles per batch", "pictures/s", "tiles/s", "s/picture p50", "gain"):
        table.add_column(name, justify="right")
    for r in sliced["results"]:
        gain = "-" if r["gain_vs_batch_1"] is None else f"{r['gain_vs_batch_1']:.2f}x"
        table.add_row(
            str(r["batch_size"]),
            f"{r['pictures_per_s']:.3f}",
            f"{r['tiles_per_s']:.1f}",
            f"{r['seconds_per_picture_p50']:.3f}",
            gain,
        )
    console.print(table)


def _print_speed(speed: dict[str, Any], console: Console) -> None:
    protocol = speed["protocol"]
    table = Table(
        title="speed",
        box=box.SIMPLE_HEAD,  # no vertical rules: the nine columns fit 80 characters
        pad_edge=False,
        collapse_padding=True,
        caption=(
            f"{protocol['device']}: {protocol['warmup_iterations']} warm-up + "
            f"{protocol['timed_iterations']} timed iterations, {protocol['input']}; "
            f"{protocol['timing']}; latency per batch; MiB = peak CUDA memory; "
            "gain = FPS / reference FPS"
        ),
        title_justify="left",
        caption_justify="left",
    )
    for name in ("backend", "dtype", "mode", "batch"):
        table.add_column(name, no_wrap=True)
    for name in ("FPS", "p50 ms", "p90 ms", "MiB", "gain"):
        table.add_column(name, justify="right", no_wrap=True)
    failures = []
    for r in speed["results"]:
        row = [r["backend"], r["dtype"], r["mode"], str(r["batch_size"])]
        if r["error"]:
            table.add_row(*row, Text("failed", style="red"), *["-"] * 4)
            failures.append(f"{' '.join(row[:3])} batch {row[3]}: {r['error']}")
            continue
        gain = r["speedup_vs_reference"]
        table.add_row(
            *row,
            _fmt(r["fps"], ".2f"),
            _fmt(r["latency_ms_p50"], ".1f"),
            _fmt(r["latency_ms_p90"], ".1f"),
            _fmt(r["peak_memory_mib"], ".0f"),
            "-" if gain is None or r["backend"] == "reference" else f"{gain:.2f}x",
        )
    console.print(table)
    for line in failures:
        console.print(Text(f"failed: {line}", style="red"), soft_wrap=True, highlight=False)


def print_op_report(report: dict[str, Any], device: str) -> None:
    """``ddetr bench op``'s report as a table: one row per part, batch, dtype, pass and
    backend, against the memory floor."""
    table = Table(
        title=f"ms_deform_attn on {device} ({report['device'].get('gpu', report['device']['cpu'])}"
        f", {report['threads']} threads; copy bandwidth {report['copy_bandwidth_gb_s']} GB/s)",
        title_justify="left",
        box=box.SIMPLE_HEAVY,
    )
    for column in (
        "part",
        "batch",
        "dtype",
        "pass",
        "backend",
        "ms",
        "vs reference",
        "floor ms",
        "GB/s",
        "x floor",
    ):
        left = column in ("part", "pass", "backend")
        table.add_column(column, justify="left" if left else "right")
    for row in report["results"]:
        table.add_row(
            row["part"],
            str(row["batch"]),
            row["dtype"],
            row["pass"],
            row["backend"],
            f"{row['ms']:.2f}",
            f"{row['speedup']:.1f}x" if row["speedup"] else "",
            f"{row['floor_ms']:.3f}",
            f"{row['gbytes_per_s']:.1f}",
            f"{row['ms'] / row['floor_ms']:.1f}",
        )
    wide = Console(width=max(stdout.width, 110))  # never crop the numbers, e.g. in CI logs
    wide.print(table)
    note = f"protocol: {report['protocol']}; 'x floor' = time / memory floor"
    stdout.print(note, highlight=False)


@bench_app.command("model")
@with_slicing
def bench(
    overrides: Overrides = None,
    weights: OptionalWeights = None,
    recipe: Recipe = None,
    flops: Annotated[
        bool, typer.Option("--flops", help="Count FLOPs (the default when --fps is not given).")
    ] = False,
    fps: Annotated[bool, typer.Option("--fps", help="Time inference: FPS and latency.")] = False,
    device: Device = "cpu",
    dtype: Annotated[
        list[str] | None,
        typer.Option(help="fp32, bf16, fp16; several as fp32,bf16. Half precision = autocast."),
    ] = None,
    batch_size: Annotated[
        list[str] | None,
        typer.Option("--batch-size", "-b", help="Batch sizes to time, e.g. 1,4 (default 1)."),
    ] = None,
    image_size: Annotated[
        tuple[int, int] | None,
        typer.Option(
            metavar="H W",
            help="Picture height and width (default: COCO's first val picture at the model's "
            "evaluation resize, 800 1199 for the official sizes).",
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            help="Folder of pictures: FLOPs averaged over them at the evaluation transform, "
            "speed on the first."
        ),
    ] = None,
    max_images: Annotated[
        int, typer.Option(help="Use the first N pictures of --images (sorted by name).")
    ] = 100,
    compile: Annotated[
        bool, typer.Option("--compile", help="Also time the torch.compile'd model.")
    ] = False,
    attention_backend: TimedBackends = "all",
    warmup: Annotated[
        int | None, typer.Option(help="Warm-up iterations (default 5 on GPU, 1 on CPU).")
    ] = None,
    iters: Annotated[
        int | None, typer.Option(help="Timed iterations (default 295 on GPU, 10 on CPU).")
    ] = None,
    threads: Threads = None,
    json_out: JsonOut = None,
    slicing: Any = None,  # SliceOptions | None, from --slice and its companions (with_slicing)
) -> None:
    """Parameters, FLOPs (counting the deformable sampling) and inference speed.

    FLOPs: 1 multiply-add = 1 FLOP, as the DETR papers; one --image-size or the mean over --images.
    Speed: one picture replicated, warm-up, then synchronised timed iterations (GPU default: the
    official 5 + 295); each available attention backend side by side.
    Without --weights the model has random weights (they change neither FLOPs nor speed).
    With --slice: pictures per second of sliced inference of one --image-size picture (default
    2048x2048) or the first of --images, at each --batch-size (tiles per forward pass), and the
    tiles per picture. The attention op alone: `ddetr bench op` (see `ddetr bench op --help`).

    Examples:
      ddetr bench
      ddetr bench --recipe recipes/two_stage.yaml --flops --images coco/val2017
      ddetr bench --fps --device cuda --dtype fp32,bf16 -b 1,4 --compile --json out.json
      ddetr bench --fps --weights r50_deformable_detr.pth --iters 20 model.num_queries=100
      ddetr bench -w runs/shapes_small --slice 128 128 --image-size 1280 1280 -b 1,16
    """
    from ddetr_cli.bench.model import BenchOptions, bench_weights

    options = BenchOptions(
        device=device,
        flops=flops or not (fps or slicing),
        fps=fps,
        dtypes=_split_list(dtype, "--dtype") or ["fp32"],
        batch_sizes=_ints(_split_list(batch_size, "--batch-size"), "--batch-size") or [1],
        image_size=image_size,
        images=images,
        max_images=max_images,
        compile=compile,
        attention_backend=attention_backend,
        warmup=warmup,
        iters=iters,
        threads=threads,
        slicing=slicing,
    )

    def progress(message: str) -> None:
        stderr.print(Text(message, style="dim"), highlight=False)

    report = bench_weights(weights, recipe, overrides or (), options, progress=progress)
    print_report(report, stdout)
    _write_report(report, json_out)


@bench_app.command("op")
def bench_op(
    device: Device = "cpu",
    batch_size: Annotated[
        list[str] | None,
        typer.Option("--batch-size", "-b", help="Batch sizes, e.g. 1,2,8 (default 1,2,8)."),
    ] = None,
    dtype: Annotated[
        list[str] | None, typer.Option(help="fp32, fp16, bf16; several as fp32,bf16.")
    ] = None,
    part: Annotated[
        list[str] | None, typer.Option(help="encoder and/or decoder (default both).")
    ] = None,
    attention_backend: TimedBackends = "all",
    locations: Annotated[
        str,
        typer.Option(help="local (points near their reference, as trained) or uniform."),
    ] = "local",
    repeats: Annotated[
        int | None, typer.Option(help="Timed repeats per row (default 5 on CPU, 20 on GPU).")
    ] = None,
    threads: Threads = None,
    json_out: JsonOut = None,
) -> None:
    """The deformable attention op alone at the model's shapes (one 800x1333 picture): time per
    backend, speed-up over the reference, and bandwidth against the memory floor.

    The floor is the bytes the op must move (inputs read once, output written once; backward
    also the gradients) over the device's measured copy bandwidth.

    Examples:
      ddetr bench op
      ddetr bench op --device cuda --dtype fp32,fp16,bf16 --json op_h100.json
    """
    import torch

    from ddetr_cli.bench.op import run_bench_op

    batches = _ints(_split_list(batch_size, "--batch-size"), "--batch-size") or [1, 2, 8]
    parts = _split_list(part, "--part") or ["encoder", "decoder"]
    if set(parts) - {"encoder", "decoder"}:
        raise UsageError(f"--part: expected encoder or decoder, got {','.join(parts)}")
    if locations not in ("local", "uniform"):
        raise UsageError(f"--locations {locations}: expected local or uniform")
    if threads:
        torch.set_num_threads(threads)
    report = run_bench_op(
        device,
        batches,
        _split_list(dtype, "--dtype") or ["fp32"],
        parts,
        attention_backend,
        locations,
        repeats,
        say=lambda message: stderr.print(Text(message, style="dim"), highlight=False),
    )
    print_op_report(report, device)
    _write_report(report, json_out)


@bench_app.command("train")
def bench_train(
    overrides: Overrides = None,
    recipe: Annotated[
        Path,
        typer.Option("--recipe", "-r", help="Recipe: a YAML file or a packaged recipe's name."),
    ] = Path("shapes"),
    device: Device = "cpu",
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", "-b", help="Pictures per step (default: the recipe's)."),
    ] = None,
    image_size: Annotated[
        tuple[int, int] | None,
        typer.Option(metavar="H W", help="Resize every picture to H x W (default: as loaded)."),
    ] = None,
    warmup: Annotated[int, typer.Option(help="Untimed steps first.")] = 3,
    iters: Annotated[int, typer.Option(help="Timed steps.")] = 10,
    eval_pictures: Annotated[
        int,
        typer.Option(
            help="Val pictures the evaluation is timed on, scaled to the split (0: none)."
        ),
    ] = 100,
    threads: Threads = None,
    json_out: JsonOut = None,
) -> None:
    """Where a training step's time goes: the data loader, the forward pass (backbone,
    encoder, decoder, the rest), the matcher, each loss, the backward pass and the optimiser,
    as medians over the timed steps; then what a run does between steps (evaluation, a
    checkpoint, a metrics line), spread over an epoch's steps. `ddetr bench --train` is the
    same command.

    Examples:
      ddetr bench --train                                  # the shapes demo
      ddetr bench --train -r refine data.format=shapes --image-size 800 1067 -b 1 --iters 3
      ddetr bench --train model.num_queries=100 --json train_step.json
    """
    from ddetr_cli.bench.train import TrainBenchOptions, run_train_bench
    from ddetr_cli.recipe import load_recipe

    options = TrainBenchOptions(
        device=device,
        steps=iters,
        warmup=warmup,
        batch_size=batch_size,
        image_size=image_size,
        eval_pictures=eval_pictures,
        threads=threads,
    )
    resolved = load_recipe(recipe, overrides or [])
    report = run_train_bench(
        resolved, options, say=lambda m: stderr.print(Text(m, style="dim"), highlight=False)
    )
    print_train_report(report, stdout)
    _write_report(report, json_out)


def print_train_report(report: dict[str, Any], console: Console) -> None:
    """The step's parts and what runs between steps, as two tables."""
    protocol = report["protocol"]
    size = protocol["image_size"]
    table = Table(
        title=f"training step: {report['model']}, batch {protocol['batch_size']}, pictures "
        f"{size if isinstance(size, str) else 'x'.join(map(str, size))}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption=f"{protocol['device']}, {protocol['threads']} threads; median ms of "
        f"{protocol['timed_steps']} steps after {protocol['warmup_steps']} warm-up"
        + (
            f"; compiled (train.compile), the first step {report['first_step_ms'] / 1e3:.1f} s"
            if protocol["compile"]
            else ""
        ),
        caption_justify="left",
    )
    for name, justify in (("part", "left"), ("ms", "right"), ("share", "right"), ("what", "left")):
        table.add_column(name, justify=justify)
    for row in report["parts"]:
        share = row["share_of_step"]
        table.add_row(
            row["part"],
            f"{row['median_ms']:.1f}",
            "" if share is None else f"{100 * share:.0f}%",
            row["what"],
        )
    console.print(table)
    between = report["between_steps"]
    rows = Table(
        title=f"between steps ({between['steps_per_epoch']} steps per epoch)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for name, justify in (("what", "left"), ("s each", "right"), ("ms per step", "right")):
        rows.add_column(name, justify=justify)
    for name in ("evaluation", "checkpoint", "metrics_line"):
        if name in between:
            item = between[name]
            rows.add_row(
                name.replace("_", " "), f"{item['seconds']:.3f}", f"{item['ms_per_step']:.2f}"
            )
    console.print(rows)
