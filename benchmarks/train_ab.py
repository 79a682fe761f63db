"""A/B of the training step: this checkout against an earlier revision, in one process.

The revision is unpacked with ``git archive`` into a temporary folder as a package of another
name (``ddetr_base``, its custom ops renamed to match), so both versions live in one process.
Each builds the recipe's run (data, model, criterion, AdamW) from the same seed and trains on
the same batches, the two alternating step by step (A, B, B, A, ...), so that the load of a
shared machine hits both alike. Reported: the median step time of each, their ratio, the same
for the data loader, and where their losses part (exact changes keep them equal).

    python benchmarks/train_ab.py                           # the shapes demo vs main, 2 threads
    python benchmarks/train_ab.py --base b3b08a4 --threads 1 --steps 40
    python benchmarks/train_ab.py model.num_queries=100 --recipe recipes/shapes.yaml
    python benchmarks/train_ab.py data.shapes.train_images=40   # data after the first epoch
    python benchmarks/train_ab.py --base b3b08a4 --this train.compile=true --warmup 10
    python benchmarks/train_ab.py --base b3b08a4 --alone base   # then --alone this, in turn

Each step is timed as ``engine.train_step`` (forward, losses, backward, optimiser), which both
versions have; wall seconds and this process's CPU seconds are both reported (on a shared
machine the CPU seconds are inflated less).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ddetr_cli before any installed one


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    p.add_argument(
        "--this",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for this checkout only (keys the base may not know: train.compile=true)",
    )
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "shapes.yaml"))
    p.add_argument("--base", default="main", help="git revision to compare with (default main)")
    p.add_argument("--steps", type=int, default=30, help="timed steps of each (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument(
        "--alone",
        choices=("base", "this"),
        help="time one version in this process (this one keeps freed memory, as train() does: "
        "what one process cannot alternate); run it for each in turn, a few rounds",
    )
    p.add_argument("--json", type=Path, help="also write the result here")
    return p.parse_args()


def load_base(revision: str, folder: Path):
    """The revision's ddetr_cli as the package ``ddetr_base``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "ddetr_cli"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    package = folder / "ddetr_base"
    (folder / "ddetr_cli").rename(package)
    renames = [
        ("ddetr_cli", "ddetr_base"),
        ("ddetr::", "ddetr_base::"),
        ("torch.ops.ddetr.", "torch.ops.ddetr_base."),
    ]
    for path in package.rglob("*.py"):
        text = path.read_text()
        for old, new in renames:
            text = text.replace(old, new)
        path.write_text(text)
    sys.path.insert(0, str(folder))
    return importlib.import_module("ddetr_base")


class Version:
    """One version's run: its model, criterion, optimiser state and loader."""

    def __init__(self, package: str, recipe_path: str, overrides: list[str]) -> None:
        import torch

        def part(name: str):
            return importlib.import_module(f"{package}.{name}")

        recipe = part("recipe").load_recipe(recipe_path, overrides)
        self.cfg, self.device = recipe["train"], torch.device("cpu")
        torch.manual_seed(self.cfg["seed"])
        splits = part("data").build_datasets(recipe)
        self.model = part("model").build_model(recipe)
        # As train.parts.build_run_parts sets it, in revisions that have the key.
        self.model.channels_last = self.cfg.get("channels_last", False)
        self.criterion = part("train.criterion").build_criterion(recipe)
        self.state = part("train.state").TrainState.create(self.model, self.cfg, self.device)
        engine = part("train.engine")
        self.train_step = engine.train_step
        # Older revisions built loaders (and compiled) in the engine, newer in train.parts.
        home = engine if hasattr(engine, "build_loaders") else part("train.parts")
        compile_for_training = getattr(home, "compile_for_training", lambda model, _: model)
        self.step_model = compile_for_training(self.model, self.cfg)
        self.loader, self.sampler, _ = home.build_loaders(
            splits, self.cfg, part("runtime").Dist(), 0
        )
        self.epoch = 0
        self.sampler.set_epoch(0)
        self.batches = iter(self.loader)
        self.model.train()
        self.times: dict[str, list[float]] = {"step_s": [], "cpu_s": [], "data_s": []}
        self.losses: list[float] = []

    def step(self, timed: bool) -> None:
        start = time.perf_counter()
        batch = next(self.batches, None)
        if batch is None:  # the next epoch
            self.epoch += 1
            self.sampler.set_epoch(self.epoch)
            self.batches = iter(self.loader)
            start = time.perf_counter()
            batch = next(self.batches)
        data_s = time.perf_counter() - start
        start, cpu = time.perf_counter(), time.process_time()
        out = self.train_step(
            self.step_model, self.criterion, self.state, [batch], self.cfg, self.device
        )
        step_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
        self.losses.append(out["loss"])
        if timed:
            for key, value in (("step_s", step_s), ("cpu_s", cpu_s), ("data_s", data_s)):
                self.times[key].append(value)

    def medians(self) -> dict[str, float]:
        return {key: statistics.median(values) for key, values in self.times.items()}


def build_version(name: str, args: argparse.Namespace, folder: Path) -> Version:
    """``base`` (the revision, unpacked into ``folder``) or ``this`` (this checkout)."""
    if name == "base":
        load_base(args.base, folder)
        return Version("ddetr_base", args.recipe, args.overrides)
    return Version("ddetr_cli", args.recipe, [*args.overrides, *args.this])


def compare(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ddetr-ab-") as folder:
        versions = {name: build_version(name, args, Path(folder)) for name in ("base", "this")}
        for i in range(args.warmup + args.steps):
            order = ("base", "this") if i % 2 == 0 else ("this", "base")
            for name in order:
                versions[name].step(timed=i >= args.warmup)
    out: dict[str, Any] = {}
    for name, version in versions.items():
        out[name] = version.medians()
    for key in ("step_s", "cpu_s", "data_s"):
        out[f"speedup_{key.removesuffix('_s')}"] = out["base"][key] / out["this"][key]
    base, this = versions["base"].losses, versions["this"].losses
    equal = [a == b for a, b in zip(base, this, strict=True)]
    out["losses_equal_through_step"] = equal.index(False) if False in equal else len(equal)
    out["last_loss"] = {"base": base[-1], "this": this[-1]}
    return out


def time_alone(args: argparse.Namespace) -> dict[str, Any]:
    """One version's medians, timed in a process of its own, as a user's run would be."""
    import torch

    torch.set_num_threads(args.threads)
    if args.alone == "this":
        from ddetr_cli.runtime import keep_freed_memory

        keep_freed_memory()
    with tempfile.TemporaryDirectory(prefix="ddetr-ab-") as folder:
        version = build_version(args.alone, args, Path(folder))
        for i in range(args.warmup + args.steps):
            version.step(timed=i >= args.warmup)
    return {args.alone: version.medians(), "last_loss": version.losses[-1]}


def main() -> int:
    args = parse_args()
    result = compare(args) if args.alone is None else time_alone(args)
    argv = " ".join(re.sub(r"^/\S*/", "", a) if a.startswith("/") else a for a in sys.argv[1:])
    result["command"] = f"python benchmarks/train_ab.py {argv}".strip()
    result["threads"] = args.threads
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
