"""GPU inference speed: ddetr (each attention backend) vs transformers, against the official V100.

The plain R50 model of both libraries (random weights, same configuration as the CPU comparison),
timed with the same loop as ``ddetr bench --fps`` (ddetr_cli.bench.model.measure_speed): one
800x1199 random picture replicated to the batch size, 5 warm-up + 295 timed iterations, CUDA events,
synchronised; bf16 under torch.autocast; eager and torch.compile. The official release reports
15.0 FPS (batch 1) and 19.4 FPS (batch 4) on a V100 in fp32.

    pip install -e ".[bench]"
    python benchmarks/compare_transformers_gpu.py  # -> benchmarks/bench_gpu_<gpu>.json, .md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import compare_transformers_cpu as common  # noqa: I001 (the sibling script, for the models)
import torch

HERE = Path(__file__).resolve().parent
OFFICIAL_V100_FPS = {1: 15.0, 4: 19.4}  # fp32, plain R50, official README


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-sizes", default="1,4")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=295)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1199)
    p.add_argument("--out-dir", type=Path, default=HERE)
    return p.parse_args()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ddetr_cli.bench.machine import machine_info
    from ddetr_cli.bench.model import measure_speed
    from ddetr_cli.ops import resolve_backend

    device = torch.device(args.device)
    picture = torch.randn(3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    backend, reason = resolve_backend(device, "auto")
    models = {f"ddetr ({backend})": common.build_ddetr_model(backend)}
    if backend != "reference":
        models["ddetr (reference)"] = common.build_ddetr_model("reference")
    models["transformers"] = common.build_transformers_model()
    rows = []
    for name, model in models.items():
        model.to(device)
        for dtype in args.dtypes.split(","):
            for compiled in (False,) if args.no_compile else (False, True):
                for batch in (int(b) for b in args.batch_sizes.split(",")):
                    result = measure_speed(
                        model, picture, device, dtype, batch, args.warmup, args.iters, compiled
                    )
                    row = {"model": name, **asdict(result)}
                    del row["backend"]  # in the model name
                    if dtype == "fp32" and batch in OFFICIAL_V100_FPS and result.fps:
                        row["vs_official_v100"] = round(result.fps / OFFICIAL_V100_FPS[batch], 2)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
        model.cpu()
        torch.cuda.empty_cache()
    import transformers

    machine = machine_info(device)
    machine["transformers"] = transformers.__version__
    return {
        "benchmark": "GPU inference speed, plain R50, random weights",
        "command": "python benchmarks/compare_transformers_gpu.py " + " ".join(sys.argv[1:]),
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine,
        "picture": [args.height, args.width],
        "protocol": {"warmup_iterations": args.warmup, "timed_iterations": args.iters},
        "ddetr_auto_backend": f"{backend} ({reason})",
        "official_v100_fp32_fps": OFFICIAL_V100_FPS,
        "results": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    gpu = report["machine"].get("gpu", "?")
    lines = [
        f"# GPU inference speed on {gpu}: ddetr vs transformers",
        "",
        f"Plain R50, {report['picture'][0]}x{report['picture'][1]} picture replicated to the "
        f"batch, {report['protocol']['warmup_iterations']} warm-up + "
        f"{report['protocol']['timed_iterations']} timed iterations, CUDA events; "
        f"{report['date_utc']} UTC, torch {report['machine']['torch']}. Official V100 fp32: "
        "15.0 FPS (batch 1), 19.4 FPS (batch 4).",
        "",
        "| model | dtype | mode | batch | FPS | p50 ms | p90 ms | peak MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r['dtype']} | {r['mode']} | {r['batch_size']} "
                         f"| {r['error']} | | | |")  # fmt: skip
            continue
        cells = [r["fps"], r["latency_ms_p50"], r["latency_ms_p90"], r["peak_memory_mib"]]
        numbers = " | ".join("-" if v is None else f"{v:.1f}" for v in cells)
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['mode']} | {r['batch_size']} | {numbers} |"
        )
    lines += ["", f'Reproduce: `pip install -e ".[bench]" && {report["command"]}`', ""]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU", file=sys.stderr)
        return 1
    try:
        import transformers  # noqa: F401
    except ImportError:
        print('transformers is not installed: pip install -e ".[bench]"', file=sys.stderr)
        return 1
    report = run(args)
    slug = re.sub(r"[^a-z0-9]+", "_", report["machine"].get("gpu", "gpu").lower()).strip("_")
    text = markdown(report)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"bench_gpu_{slug}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / f"gpu_{slug}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
