"""CPU end-to-end inference: ddetr vs Hugging Face transformers' DeformableDetrForObjectDetection.

Same configuration (plain multi-scale Deformable DETR, ResNet-50, 4 levels, 300 queries,
91 classes, random weights: both have 40,069,665 parameters), same 800x1067 random-normal
picture, same number of threads, float32, eval mode, no gradients. The models are timed in
interleaved rounds (ddetr auto, ddetr reference, transformers, again...) so that load changes on
a shared machine hit all of them alike. Nothing is downloaded (HF_HUB_OFFLINE=1).

    pip install -e ".[bench]"                      # transformers, a benchmark-only extra
    python benchmarks/compare_transformers_cpu.py  # -> benchmarks/bench_cpu_e2e.json, cpu_e2e.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch anything from the Hub

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
COMMAND = "python benchmarks/compare_transformers_cpu.py"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1067)
    p.add_argument("--threads", type=int, default=2, help="torch threads for both (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--out-dir", type=Path, default=HERE, help="where the JSON and .md go")
    p.add_argument("--no-write", action="store_true", help="print only, write no files")
    return p.parse_args()


def build_transformers_model() -> torch.nn.Module:
    """transformers' model in the plain R50 configuration, with its own (non-timm) ResNet-50."""
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(
        depths=[3, 4, 6, 3],
        hidden_sizes=[256, 512, 1024, 2048],
        layer_type="bottleneck",
        out_features=["stage2", "stage3", "stage4"],  # C3, C4, C5 as the official
    )
    config = DeformableDetrConfig(
        backbone_config=backbone,
        num_labels=91,
        num_queries=300,
        num_feature_levels=4,
        encoder_n_points=4,
        decoder_n_points=4,
        with_box_refine=False,
        two_stage=False,
    )
    return DeformableDetrForObjectDetection(config).eval()


def build_ddetr_model(backend: str) -> torch.nn.Module:
    from ddetr_cli.bench.model import build_bench_model

    model, _recipe, _source = build_bench_model(None, None, [])  # defaults: plain R50
    model.set_attention_backend(backend)
    return model.eval()


def machine() -> dict[str, Any]:
    from ddetr_cli.bench.machine import machine_info

    info = machine_info(torch.device("cpu"))
    import transformers

    info["transformers"] = transformers.__version__
    return info


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds): on a shared machine the CPU time is inflated less by
    other processes than the wall time, so both are recorded."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ddetr_cli.ops import resolve_backend

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    picture = torch.randn(1, 3, args.height, args.width)

    auto_backend, auto_reason = resolve_backend("cpu", "auto")
    models = {
        f"ddetr ({auto_backend})": build_ddetr_model("auto"),
        "ddetr (reference)": build_ddetr_model("reference"),
        "transformers": build_transformers_model(),
    }
    if auto_backend == "reference":  # no kernel here: the two ddetr rows would be the same run
        del models["ddetr (reference)"]
    calls = {
        name: (lambda m=model: m(picture))
        if name.startswith("ddetr")
        else (lambda m=model: m(pixel_values=picture))
        for name, model in models.items()
    }
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    for name, model in models.items():
        if name.startswith("ddetr"):  # as `ddetr predict` and `ddetr bench` run it
            model.optimize_for_inference()  # after counting: folding adds conv biases

    times: dict[str, list[float]] = {name: [] for name in models}
    cpu_times: dict[str, list[float]] = {name: [] for name in models}
    load_before = os.getloadavg()
    with torch.inference_mode():
        for r in range(args.warmup + args.rounds):
            for name, call in calls.items():
                seconds, cpu_seconds = timed(call)
                if r >= args.warmup:
                    times[name].append(seconds)
                    cpu_times[name].append(cpu_seconds)
                kind = "warm-up" if r < args.warmup else "timed"
                print(
                    f"round {r + 1} ({kind}) {name}: {seconds:.2f} s ({cpu_seconds:.2f} s CPU)",
                    file=sys.stderr,
                )
    load_after = os.getloadavg()

    hf_median = statistics.median(times["transformers"])
    hf_min = min(times["transformers"])
    hf_cpu = statistics.median(cpu_times["transformers"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(
            {
                "model": name,
                "params": params[name],
                "seconds_median": round(median, 3),
                "seconds_min": round(min(values), 3),
                "seconds_all": [round(v, 3) for v in values],
                "cpu_seconds_median": round(statistics.median(cpu_times[name]), 3),
                "speedup_vs_transformers": round(hf_median / median, 2),
                "speedup_vs_transformers_min": round(hf_min / min(values), 2),
                "speedup_vs_transformers_cpu_seconds": round(
                    hf_cpu / statistics.median(cpu_times[name]), 2
                ),
            }
        )
    return {
        "benchmark": "CPU end-to-end inference, one picture, float32, eval, inference_mode",
        "command": COMMAND
        + "".join(
            f" --{k.replace('_', '-')} {v}"
            for k, v in (
                ("height", args.height),
                ("width", args.width),
                ("threads", args.threads),
                ("warmup", args.warmup),
                ("rounds", args.rounds),
            )
        ),
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "picture": [args.height, args.width],
        "threads": args.threads,
        "warmup_rounds": args.warmup,
        "timed_rounds": args.rounds,
        "ddetr_auto_backend": f"{auto_backend} ({auto_reason})",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "results": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    load = report["load_average_before"][0], report["load_average_after"][0]
    lines = [
        "# CPU end-to-end inference: ddetr vs transformers",
        "",
        "Plain Deformable DETR (ResNet-50, 4 levels, 300 queries, 91 classes, random weights), "
        f"one "
        f"{report['picture'][0]}x{report['picture'][1]} random-normal picture, float32, "
        f"{report['threads']} threads, inference mode; {report['warmup_rounds']} warm-up + "
        f"{report['timed_rounds']} timed rounds, the models interleaved within each round.",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores; torch {m['torch']}, transformers "
        f"{m['transformers']}; {report['date_utc']} UTC. ddetr's auto backend: "
        f"{report['ddetr_auto_backend']}.",
        "",
        "| model | params | median s / picture | min s | CPU s (median) "
        "| speed-up vs transformers: median s; min s; CPU s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['seconds_median']:.2f} | "
            f"{r['seconds_min']:.2f} | {r['cpu_seconds_median']:.2f} | "
            f"{r['speedup_vs_transformers']:.2f}x; {r['speedup_vs_transformers_min']:.2f}x; "
            f"{r['speedup_vs_transformers_cpu_seconds']:.2f}x |"
        )
    if max(load) > m["cpu_count"]:
        lines += [
            "",
            f"**Noisy: the machine was shared** (more runnable work than its {m['cpu_count']} "
            "cores), so the wall times are inflated unevenly; the CPU seconds are the steadier "
            "figure. Re-run on a quiet machine for numbers of record.",
        ]
    lines += [
        "",
        f"1-minute load average {load[0]:.2f} before, {load[1]:.2f} after "
        f"(above {report['threads']} means other work shared the cores and the times are noisy).",
        "",
        f'Reproduce: `pip install -e ".[bench]" && {report["command"]}`',
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    try:
        import transformers  # noqa: F401
    except ImportError:
        print(
            'transformers is not installed: pip install -e ".[bench]" (a benchmark-only extra)',
            file=sys.stderr,
        )
        return 1
    report = run(args)
    text = markdown(report)
    print(text)
    if not args.no_write:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "bench_cpu_e2e.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out_dir / "cpu_e2e.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
