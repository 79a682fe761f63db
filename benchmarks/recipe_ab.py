"""Training-step time of recipe variants, side by side in one process.

Each variant (a comma-separated list of key=value overrides of the recipe; "" for the recipe
itself) builds its own run as ``ddetr bench --train`` does (data, model, losses, AdamW, and with
train.compile its compiled model), takes warm-up steps (the compile, if any, happens there and
its seconds are reported), then the variants take their timed steps in turn, the order
reversed every round, so that the drift of a shared machine hits all alike. Reported: the median
step of each and its ratio to the first variant's.

    python benchmarks/recipe_ab.py "" model.enc_layers=1,model.dim_feedforward=256
    python benchmarks/recipe_ab.py "" train.compile=true train.amp=bf16 --steps 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ddetr_cli before any installed one


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help='comma-separated overrides; "" for the recipe')
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "shapes.yaml"))
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args()

    import torch

    from ddetr_cli.bench.train import _Run
    from ddetr_cli.recipe import load_recipe
    from ddetr_cli.train.timing import NO_TIMER

    runs, warmup_s = [], []
    for variant in args.variants:
        run = _Run(
            load_recipe(args.recipe, [o for o in variant.split(",") if o]), torch.device("cpu")
        )
        run.model.train()
        loader = iter(run.loader)
        run.batches = [next(loader) for _ in range(args.warmup + args.steps)]
        start = time.perf_counter()
        for batch in run.batches[: args.warmup]:
            run.step(batch, NO_TIMER)
        warmup_s.append(time.perf_counter() - start)
        run.times = []
        runs.append(run)
    for i in range(args.steps):
        for run in runs if i % 2 == 0 else runs[::-1]:
            start = time.perf_counter()
            run.step(run.batches[args.warmup + i], NO_TIMER)
            run.times.append(time.perf_counter() - start)
    first = statistics.median(runs[0].times)
    result = {
        "recipe": Path(args.recipe).name,
        "variants": [
            {
                "overrides": variant or "(the recipe)",
                "step_ms": 1e3 * statistics.median(run.times),
                "vs_first": first / statistics.median(run.times),
                "warmup_s": seconds,
            }
            for variant, run, seconds in zip(args.variants, runs, warmup_s, strict=True)
        ],
        "command": "python benchmarks/recipe_ab.py " + " ".join(f'"{v}"' for v in args.variants),
    }
    for row in result["variants"]:
        print(
            f"{row['overrides']:70s} {row['step_ms']:7.1f} ms  x{row['vs_first']:.2f}  "
            f"(warm-up {row['warmup_s']:.1f} s)"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
