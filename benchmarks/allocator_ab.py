"""The training step with and without ``runtime.keep_freed_memory`` (glibc keeping freed memory
for reuse), in fresh processes that alternate (off, on, off, on, ...), since the setting holds
for a whole process. Each process builds the recipe's run as ``ddetr bench --train`` does, takes
warm-up steps, then times steps; reported per process: the median step, and per step the CPU
seconds in user and kernel mode and the minor page faults (fresh pages the kernel maps).

    python benchmarks/allocator_ab.py                    # the shapes demo, 4 rounds
    python benchmarks/allocator_ab.py --rounds 6 --steps 60

Run it alone: this machine's speed drifts between minutes, so trust the faults and the kernel
time more than one pair of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_process(recipe_path: str, warmup: int, steps: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    import torch

    from ddetr_cli.bench.train import _Run
    from ddetr_cli.recipe import load_recipe
    from ddetr_cli.train.timing import NO_TIMER

    run = _Run(load_recipe(recipe_path, []), torch.device("cpu"))
    run.model.train()
    loader = iter(run.loader)
    batches = [next(loader) for _ in range(warmup + steps)]
    for batch in batches[:warmup]:
        run.step(batch, NO_TIMER)
    before, times = resource.getrusage(resource.RUSAGE_SELF), []
    for batch in batches[warmup:]:
        start = time.perf_counter()
        run.step(batch, NO_TIMER)
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "step_s": statistics.median(times),
        "user_s_per_step": (after.ru_utime - before.ru_utime) / steps,
        "kernel_s_per_step": (after.ru_stime - before.ru_stime) / steps,
        "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "shapes.yaml"))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_process(args.recipe, args.warmup, args.steps)))
        return 0
    runs: dict[str, list[dict[str, float]]] = {"default": [], "kept": []}
    for _ in range(args.rounds):
        for name in ("default", "kept"):
            env = {**os.environ, "DDETR_KEEP_FREED_MEMORY": "0" if name == "default" else "1"}
            command = [sys.executable, __file__, "--child", "--recipe", args.recipe]
            command += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
            out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    result: dict[str, object] = {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for name, rs in runs.items()
    }
    result["speedup_step"] = result["default"]["step_s"] / result["kept"]["step_s"]  # type: ignore[index]
    result["runs"] = runs
    result["command"] = "python benchmarks/allocator_ab.py " + " ".join(sys.argv[1:])
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
