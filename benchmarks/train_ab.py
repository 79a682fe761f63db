"""A/B of the training step: this checkout against an earlier revision, on a shared machine.

Both versions run the same recipe's first steps, through the functions both have
(``build_datasets``, ``build_model``, ``build_criterion``, ``TrainState``, ``build_loaders``,
``engine.train_step``), in separate processes that alternate (A, B, B, A, A, B, ...) so that
load changes on a shared machine hit both alike. Each process reports its median step time and
its median data time after warm-up; the result is the ratio of the medians of those medians.
The revision is unpacked with ``git archive`` into a temporary folder (no worktree is made).

    python benchmarks/train_ab.py --base main --rounds 6           # the shapes demo, 2 threads
    python benchmarks/train_ab.py --base main --threads 1 model.num_queries=100

``--components`` times instead, in one process, the criterion (matcher and losses) and the
optimiser step of both versions on the same model outputs, alternating 20 times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "shapes.yaml"))
    p.add_argument("--base", default="main", help="git revision to compare with (default main)")
    p.add_argument("--rounds", type=int, default=6, help="processes per version (default 6)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per process (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--components", action="store_true",
                   help="instead, time the criterion of both versions in one process")  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def worker(args: argparse.Namespace) -> None:
    """Time ``args.steps`` steps of whichever ddetr_cli is first on the path; print JSON."""
    import torch

    from ddetr_cli.data import build_datasets
    from ddetr_cli.model import build_model
    from ddetr_cli.recipe import load_recipe
    from ddetr_cli.runtime import Dist
    from ddetr_cli.train.criterion import build_criterion
    from ddetr_cli.train.engine import build_loaders, train_step
    from ddetr_cli.train.state import TrainState

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.overrides)
    torch.manual_seed(recipe["train"]["seed"])
    device = torch.device("cpu")
    splits = build_datasets(recipe)
    model = build_model(recipe)
    criterion = build_criterion(recipe)
    state = TrainState.create(model, recipe["train"], device)
    loader, sampler, _ = build_loaders(splits, recipe["train"], Dist(), 0)
    sampler.set_epoch(0)
    batches = iter(loader)
    data_s, step_s, cpu_s, losses = [], [], [], []
    model.train()
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        batch = next(batches)
        data_s.append(time.perf_counter() - start)
        start, cpu = time.perf_counter(), time.process_time()
        out = train_step(model, criterion, state, [batch], recipe["train"], device)
        step_s.append(time.perf_counter() - start)
        cpu_s.append(time.process_time() - cpu)
        losses.append(out["loss"])
    skip = args.warmup
    print(json.dumps({"step_s": statistics.median(step_s[skip:]),
                      "step_cpu_s": statistics.median(cpu_s[skip:]),
                      "data_s": statistics.median(data_s[skip:]), "losses": losses}))  # fmt: skip


def _base_criterion(base: Path):
    """The base revision's matcher and criterion modules, loaded beside this checkout's."""
    import importlib.util

    modules = {}
    for name in ("matcher", "criterion"):
        source = (base / "ddetr_cli" / "train" / f"{name}.py").read_text()
        source = source.replace("ddetr_cli.train.matcher", "base_matcher")
        spec = importlib.util.spec_from_loader(f"base_{name}", loader=None)
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"base_{name}"] = module
        exec(compile(source, f"base:{name}.py", "exec"), module.__dict__)
        modules[name] = module
    return modules["criterion"]


def components(base: Path, args: argparse.Namespace) -> dict:
    """The criterion (matching, losses and their backward) of both versions on the same model
    outputs, alternating; medians of 20 calls each."""
    import torch

    from ddetr_cli.data import build_datasets
    from ddetr_cli.model import build_model
    from ddetr_cli.recipe import load_recipe
    from ddetr_cli.runtime import Dist
    from ddetr_cli.train.criterion import build_criterion
    from ddetr_cli.train.engine import build_loaders

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.overrides)
    torch.manual_seed(0)
    model = build_model(recipe)
    loader, sampler, _ = build_loaders(build_datasets(recipe), recipe["train"], Dist(), 0)
    sampler.set_epoch(0)
    images, targets = next(iter(loader))
    outputs = model(images)
    criteria = {"base": _base_criterion(base).build_criterion(recipe),
                "this": build_criterion(recipe)}  # fmt: skip
    leaves = _as_leaves(outputs)
    times: dict[str, list[float]] = {name: [] for name in criteria}
    totals = {}
    for _ in range(22):
        for name, criterion in criteria.items():
            start = time.perf_counter()
            total = criterion.total(criterion(leaves, targets))
            total.backward()
            times[name].append(time.perf_counter() - start)
            totals[name] = total.item()
    medians = {name: statistics.median(t[2:]) for name, t in times.items()}
    return {"criterion_ms": {k: v * 1e3 for k, v in medians.items()},
            "criterion_speedup": medians["base"] / medians["this"],
            "same_total_loss": totals["base"] == totals["this"]}  # fmt: skip


def _as_leaves(outputs):
    """The model's outputs as tensors of their own, so backward stops at them."""
    if isinstance(outputs, dict):
        return {k: _as_leaves(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_as_leaves(v) for v in outputs]
    return outputs.detach().requires_grad_()


def unpack(revision: str, folder: Path) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "ddetr_cli"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)


def run_worker(source: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--recipe", args.recipe, "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           *args.overrides]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="ddetr-ab-") as folder:
        base = Path(folder)
        unpack(args.base, base)
        sources = {"base": base, "this": ROOT}
        runs: dict[str, list[dict]] = {"base": [], "this": []}
        for r in range(args.rounds):
            order = ("base", "this") if r % 2 == 0 else ("this", "base")
            for name in order:
                runs[name].append(run_worker(sources[name], args))
                last = runs[name][-1]
                print(f"round {r + 1} {name}: {last['step_s'] * 1e3:.1f} ms/step, "
                      f"{last['step_cpu_s'] * 1e3:.1f} ms CPU", file=sys.stderr)  # fmt: skip
    out = {}
    for name, results in runs.items():
        out[name] = {key: statistics.median(r[key] for r in results)
                     for key in ("step_s", "step_cpu_s", "data_s")}  # fmt: skip
    out["step_speedup"] = out["base"]["step_s"] / out["this"]["step_s"]
    # CPU seconds are inflated less by other processes than wall seconds on a shared machine.
    out["step_cpu_speedup"] = out["base"]["step_cpu_s"] / out["this"]["step_cpu_s"]
    out["data_speedup"] = out["base"]["data_s"] / out["this"]["data_s"]
    out["same_losses"] = runs["base"][0]["losses"] == runs["this"][0]["losses"]
    return out


def main() -> int:
    args = parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.components:
        with tempfile.TemporaryDirectory(prefix="ddetr-ab-") as folder:
            unpack(args.base, Path(folder))
            result = components(Path(folder), args)
    else:
        result = compare(args)
    result["command"] = "python benchmarks/train_ab.py " + " ".join(sys.argv[1:])
    result["load_average_1m"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
