"""CPU training step: ddetr vs Hugging Face transformers' DeformableDetrForObjectDetection.

Both train the same configuration on the same batches, their steps alternating so that the load
of a shared machine hits both alike; each step is timed part by part (forward pass, losses,
backward pass, optimiser) with ``ddetr_cli.train.timing.PartTimer``. Medians after warm-up.

- ``--config shapes`` (default): the demo (``recipes/shapes.yaml``: the 5-block CNN trained from
  scratch, d_model 128, 1 + 2 layers, FFN 256, 30 queries, 3 levels, two-stage with box
  refinement; overrides such as ``model.enc_layers=2`` change it for both), batches of the
  recipe's 8 shapes pictures at 128x128 (``-b`` another). transformers builds no such CNN:
  its backbone module is replaced by ddetr's (same weights layout, trainable batch norm, as
  the recipe).
- ``--config refine``: the paper's refine recipe (ResNet-50 with frozen batch norm and stem,
  4 levels, 300 queries, 91 classes, box refinement), random weights, shapes pictures resized
  to ``--size`` (800 x 1067), batch ``-b`` (1). transformers uses its own ResNet-50.

What differs, and is said in the report: transformers computes no two-stage encoder loss (its
loss has no term for the encoder's proposals), weighs the class loss 1 instead of 2 (weights
cost nothing) and samples with grid_sample (ddetr with its C++ kernel, ``auto``). Both use
torch's fused AdamW (the optimiser transformers' Trainer picks with torch >= 2.8), the official
parameter groups and gradient clipping at 0.1. Nothing is downloaded (HF_HUB_OFFLINE=1).

    python benchmarks/compare_transformers_train.py                       # shapes, 2 threads
    python benchmarks/compare_transformers_train.py --config refine --steps 3 --warmup 1
    python benchmarks/compare_transformers_train.py --profile 5

``--profile N`` then profiles N more steps of each (alternating, under one ``torch.profiler``)
and splits a step's CPU time into arithmetic (matrix products, convolutions, the deformable
sampling) and everything else (element-wise ops, norms, copies, Python, the autograd engine).
ddetr's arithmetic alone bounds how far ahead of transformers' whole step any cut of ddetr's
other work could go. The profiler's own cost inflates the small operations by ~10%.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch anything from the Hub

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ddetr_cli before any installed one

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ddetr_cli.train.timing import PartTimer  # noqa: E402

CONFIGS = {
    "shapes": ["shapes", []],
    "refine": [
        "refine",
        ["model.pretrained_backbone=false", "data.format=shapes", "train.batch_size=1"],
    ],
}
PARTS = ("forward", "losses", "backward", "optimizer", "step")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value overrides of the ddetr recipe")
    p.add_argument("--config", choices=sorted(CONFIGS), default="shapes")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(800, 1067),
        metavar=("H", "W"),
        help="refine: picture size (default 800 1067)",
    )
    p.add_argument(
        "-b",
        "--batch-size",
        type=int,
        help="pictures per step (default: shapes the recipe's, refine 1)",
    )
    p.add_argument("--steps", type=int, default=20, help="timed steps of each (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument(
        "--profile", type=int, default=0, metavar="N", help="then profile N steps of each"
    )
    p.add_argument("--json", type=Path, help="also write the report here")
    return p.parse_args()


def ddetr_run(args: argparse.Namespace):
    """ddetr's model, criterion, optimiser state and recipe, and the batches both train on."""
    from ddetr_cli.recipe import load_recipe
    from ddetr_cli.runtime import Dist
    from ddetr_cli.train.parts import build_run_parts, seed_everything

    name, overrides = CONFIGS[args.config]
    sized = [f"train.batch_size={args.batch_size}"] if args.batch_size else []
    recipe = load_recipe(name, [*overrides, *sized, "data.num_workers=0", *args.overrides])
    seed_everything(recipe["train"]["seed"])
    parts = build_run_parts(recipe, Dist())  # as a training run builds them
    parts.sampler.set_epoch(0)
    batches, loaded = [], iter(parts.train_loader)
    for _ in range(args.warmup + args.steps):
        images, targets = next(loaded)
        if args.config == "refine":
            images = [
                F.interpolate(i[None], size=tuple(args.size), mode="bilinear")[0] for i in images
            ]
        batches.append((images, targets))
    return recipe, parts.model, parts.criterion, parts.state, batches


def hf_model(recipe: dict[str, Any], ddetr_model: torch.nn.Module) -> torch.nn.Module:
    """transformers' model in the recipe's configuration (its ResNet-50, or ddetr's CNN)."""
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

    m = recipe["model"]
    convnet = m["backbone"] == "convnet"
    # A ResNet config whose stage widths match the backbone's, so the input projections fit.
    widths = [32, 64, 128, 128] if convnet else [256, 512, 1024, 2048]
    backbone = ResNetConfig(
        depths=[1, 1, 1, 1] if convnet else [3, 4, 6, 3],
        hidden_sizes=widths,
        layer_type="basic" if convnet else "bottleneck",
        out_features=["stage2", "stage3", "stage4"],
    )
    config = DeformableDetrConfig(
        backbone_config=backbone,
        num_labels=m["num_classes"],
        num_queries=m["num_queries"],
        d_model=m["hidden_dim"],
        encoder_layers=m["enc_layers"],
        decoder_layers=m["dec_layers"],
        encoder_attention_heads=m["nheads"],
        decoder_attention_heads=m["nheads"],
        encoder_ffn_dim=m["dim_feedforward"],
        decoder_ffn_dim=m["dim_feedforward"],
        dropout=m["dropout"],
        num_feature_levels=m["num_feature_levels"],
        encoder_n_points=m["enc_n_points"],
        decoder_n_points=m["dec_n_points"],
        with_box_refine=m["with_box_refine"],
        two_stage=m["two_stage"],
        two_stage_num_proposals=m["num_queries"],
        auxiliary_loss=m["aux_loss"],
        class_cost=2,
        bbox_cost=5,
        giou_cost=2,
        focal_alpha=recipe["loss"]["focal_alpha"],
    )
    model = DeformableDetrForObjectDetection(config)
    if convnet:
        model.model.backbone.model = _Features(ddetr_model.backbone[0])
    return model.train()


class _Features(torch.nn.Module):
    """ddetr's CNN as transformers' backbone: a picture in, the feature maps out (a copy, so
    the two models train separately)."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        import copy

        self.backbone = copy.deepcopy(backbone)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        mask = torch.zeros(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.bool)
        return [feature for feature, _ in self.backbone(pixel_values, mask)]


def hf_optimizer(model: torch.nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    """Fused AdamW with the official groups, by transformers' parameter names."""
    groups: dict[str, list] = {"rest": [], "backbone": [], "linear_proj": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "backbone" in name:
            groups["backbone"].append(param)
        elif "sampling_offsets" in name or "reference_points" in name:
            groups["linear_proj"].append(param)
        else:
            groups["rest"].append(param)
    lrs = {
        "rest": train["lr"],
        "backbone": train["lr_backbone"],
        "linear_proj": train["lr"] * train["lr_linear_proj_mult"],
    }
    chosen = [{"params": p, "lr": lrs[k]} for k, p in groups.items() if p]
    return torch.optim.AdamW(chosen, lr=train["lr"], weight_decay=train["weight_decay"], fused=True)


def hf_step(model, optimizer, batch, timer: PartTimer, clip: float) -> None:
    images, targets = batch
    pixels = torch.stack(images)
    mask = torch.ones(pixels.shape[0], *pixels.shape[-2:], dtype=torch.long)
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    with timer("step"):
        optimizer.zero_grad(set_to_none=True)
        with timer("forward"):  # the losses are timed inside it, and taken out below
            out = model(pixel_values=pixels, pixel_mask=mask, labels=labels)
        with timer("backward"):
            out.loss.backward()
        with timer("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()


def _timed_loss(loss_function, timer: PartTimer):
    def timed(*args, **kwargs):
        with timer("losses"):
            return loss_function(*args, **kwargs)

    return timed


# Operations whose time is the arithmetic itself (self CPU time, by name).
ARITHMETIC = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "scaled_dot"),
    "convolutions": ("convolution",),
    "deformable sampling": ("ddetr_cpu_kernel::", "grid_sampler"),
}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    recipe, model, criterion, state, batches = ddetr_run(args)
    hf = hf_model(recipe, model)
    optimizer = hf_optimizer(hf, recipe["train"])
    timers = {"ddetr": PartTimer(), "transformers": PartTimer()}
    hf.loss_function = _timed_loss(hf.loss_function, timers["transformers"])
    model.train()
    steps = {
        "ddetr": lambda batch, timer: _ddetr_step(model, criterion, state, recipe, batch, timer),
        "transformers": lambda batch, timer: hf_step(
            hf, optimizer, batch, timer, recipe["train"]["clip_max_norm"]
        ),
    }
    for i, batch in enumerate(batches):
        for name in _in_turn(steps, i):
            steps[name](batch, timers[name])
            timers[name].next_step()
    for step in timers["transformers"].steps:
        step["forward"] -= step["losses"]
    report = _report(args, recipe, model, hf, timers)
    if args.profile:
        timed = batches[args.warmup : args.warmup + args.profile]
        report["profile"] = _profile(steps, timed)
    return report


def _in_turn(steps: dict, i: int) -> list[str]:
    """The models' order for batch ``i``: reversed every other batch, so that neither always
    runs first (the drift of a shared machine and warm caches hit both alike)."""
    return list(steps) if i % 2 == 0 else list(steps)[::-1]


def _ddetr_step(model, criterion, state, recipe, batch, timer: PartTimer) -> None:
    from ddetr_cli.train.engine import train_step

    with timer("step"):
        train_step(
            model, criterion, state, [batch], recipe["train"], torch.device("cpu"), timer=timer
        )


def _profile(steps: dict, batches: list) -> dict[str, dict[str, float]]:
    """Self CPU ms per step of each kind of ARITHMETIC and of the rest, for each of ``steps``,
    their steps alternating under one profiler (each attributed by the range it ran in)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i, batch in enumerate(batches):
            for name in _in_turn(steps, i):
                with torch.profiler.record_function(f"step:{name}"):
                    steps[name](batch, PartTimer())
    ranges = sorted(
        (e.time_range.start, e.time_range.end, e.key[5:])
        for e in prof.events()
        if e.key.startswith("step:")
    )
    starts = [start for start, _, _ in ranges]
    kinds = (*ARITHMETIC, "everything else")
    per_step = {name: dict.fromkeys(kinds, 0.0) for name in steps}
    for event in prof.events():
        i = bisect.bisect_right(starts, event.time_range.start) - 1
        if event.key.startswith("step:") or i < 0 or event.time_range.start > ranges[i][1]:
            continue
        kind = next(
            (k for k, names in ARITHMETIC.items() if any(n in event.key for n in names)),
            "everything else",
        )
        per_step[ranges[i][2]][kind] += event.self_cpu_time_total / 1e3 / len(batches)
    return per_step


def _report(args, recipe, model, hf, timers) -> dict[str, Any]:
    from ddetr_cli.bench.machine import machine_info
    from ddetr_cli.model.variants import describe_model
    from ddetr_cli.ops import resolve_backend

    medians = {name: t.median_ms(skip=args.warmup) for name, t in timers.items()}
    rows = [
        {
            "part": part,
            "ddetr_ms": medians["ddetr"][part],
            "transformers_ms": medians["transformers"][part],
            "speedup": medians["transformers"][part] / medians["ddetr"][part],
        }
        for part in PARTS
    ]
    import transformers

    batch = recipe["train"]["batch_size"]
    size = "128x128" if args.config == "shapes" else "x".join(map(str, args.size))
    return {
        "benchmark": f"CPU training step, {args.config}: {describe_model(recipe)}, batch "
        f"{batch} at {size}, float32",
        "command": "python benchmarks/compare_transformers_train.py " + " ".join(sys.argv[1:]),
        "machine": {**machine_info(torch.device("cpu")), "transformers": transformers.__version__},
        "threads": args.threads,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "ddetr_attention_backend": resolve_backend("cpu", recipe["model"]["attention_backend"])[0],
        "params": {
            "ddetr": sum(p.numel() for p in model.parameters()),
            "transformers": sum(p.numel() for p in hf.parameters()),
        },
        "parts": rows,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['benchmark']}; {report['threads']} threads; medians of "
        f"{report['timed_steps']} steps after {report['warmup_steps']}:",
        "",
        "| part | ddetr ms | transformers ms | transformers / ddetr |",
        "|---|---:|---:|---:|",
    ]
    for r in report["parts"]:
        lines.append(
            f"| {r['part']} | {r['ddetr_ms']:.1f} | {r['transformers_ms']:.1f} | "
            f"{r['speedup']:.2f}x |"
        )
    if "profile" in report:
        p = report["profile"]
        lines += ["", "| self CPU ms a step (profiled) | ddetr | transformers |", "|---|---:|---:|"]
        for kind in p["ddetr"]:
            lines.append(f"| {kind} | {p['ddetr'][kind]:.1f} | {p['transformers'][kind]:.1f} |")
        floor = sum(v for k, v in p["ddetr"].items() if k != "everything else")
        total = {name: sum(v.values()) for name, v in p.items()}
        lines += [
            f"| all | {total['ddetr']:.1f} | {total['transformers']:.1f} |",
            "",
            f"ddetr's arithmetic alone: {floor:.1f} ms; transformers' whole step over it: "
            f"{total['transformers'] / floor:.2f}x (the most any cut of ddetr's other work "
            "could reach).",
        ]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    start = time.perf_counter()
    report = compare(args)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
