"""``ddetr bench --train``: where the time of a training step goes, part by part.

The recipe's own training run is built (data, model, matcher and losses, AdamW and its
parameter groups) and a few steps are taken as the engine takes them (``engine.train_step``),
timed part by part by ``timing.PartTimer`` (the device synchronised around each part): the data
loader, the model's forward pass (backbone, encoder, decoder, the rest), the matcher, each loss,
the backward pass and the optimiser. Each figure is the median over the timed steps, after
warm-up steps. What a run does between steps is timed once and spread over an epoch's steps:
the evaluation (on the first ``eval_pictures`` val pictures, scaled to the split), a checkpoint
and a metrics.jsonl line. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ddetr_cli.bench.machine import machine_info
from ddetr_cli.errors import DdetrError, UsageError
from ddetr_cli.runtime import Dist, keep_freed_memory, resolve_device
from ddetr_cli.train.timing import NO_TIMER, PartTimer, timed_batches

# (part, what it covers), in the order of the report; "-" parts are sub-parts of the one above.
PARTS = (
    ("data", "the loader's next batch (augmentation, collation)"),
    ("step", "one optimiser step, all of the below"),
    ("forward", "the model's forward pass"),
    ("- backbone", "the CNN"),
    ("- encoder", "the deformable encoder"),
    ("- decoder", "the decoder (with its box refinement heads)"),
    ("- rest", "input projections, position encodings, two-stage proposals, heads"),
    ("losses", "matching and every loss of every level"),
    ("- matcher", "cost matrices and the Hungarian assignment"),
    ("- loss_labels", "focal classification loss"),
    ("- loss_boxes", "L1 and GIoU box losses"),
    ("- cardinality_error", "logged only, never trained on"),
    ("backward", "the backward pass"),
    ("optimizer", "gradient clipping and the AdamW step"),
    ("ema", "the EMA update (train.ema)"),
)
FORWARD_MODULES = ("backbone", "encoder", "decoder")
LOSS_PARTS = ("matcher", "loss_labels", "loss_boxes", "cardinality_error")


@dataclass
class TrainBenchOptions:
    device: str = "cpu"
    steps: int = 10
    warmup: int = 3
    batch_size: int | None = None  # default: the recipe's train.batch_size
    image_size: tuple[int, int] | None = None  # every picture resized to (H, W)
    eval_pictures: int = 100  # 0: no evaluation timed
    threads: int | None = None


def check_train_options(options: TrainBenchOptions) -> None:
    """UsageError for values that make no sense."""
    if options.steps < 1 or options.warmup < 0:
        raise UsageError(
            f"need --iters >= 1 and --warmup >= 0, got {options.steps}, {options.warmup}"
        )
    if options.batch_size is not None and options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.image_size is not None and min(options.image_size) < 32:
        raise UsageError(f"--image-size must be at least 32 32, got {options.image_size}")
    if options.eval_pictures < 0:
        raise UsageError(f"--eval-pictures must be 0 or more, got {options.eval_pictures}")
    if options.threads is not None and options.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {options.threads}")


class _Run:
    """What a training run is made of, built as the engine builds it, minus the run folder."""

    def __init__(self, recipe: dict[str, Any], device: torch.device) -> None:
        from ddetr_cli.train.parts import build_run_parts, seed_everything

        keep_freed_memory()  # as the engine's train() does
        seed_everything(recipe["train"]["seed"])
        self.recipe, self.cfg, self.device = recipe, recipe["train"], device
        parts = build_run_parts(recipe, Dist(device=device))
        self.splits, self.model, self.step_model = parts.splits, parts.model, parts.step_model
        self.criterion, self.state = parts.criterion, parts.state
        self.loader, self.sampler = parts.train_loader, parts.sampler
        self.sampler.set_epoch(0)

    def step(self, batch, timer: PartTimer) -> None:
        from ddetr_cli.train.engine import train_step

        with timer("step"):
            train_step(
                self.step_model,
                self.criterion,
                self.state,
                [batch],
                self.cfg,
                self.device,
                timer=timer,
            )
            if self.state.ema is not None:
                with timer("ema"):
                    self.state.ema.update(self.model)


def _resized(batch, size: tuple[int, int] | None):
    """The batch with every picture resized to ``size`` (boxes are relative: unchanged)."""
    if size is None:
        return batch
    images, targets = batch
    images = [
        F.interpolate(img[None], size=size, mode="bilinear", antialias=True)[0] for img in images
    ]
    return images, targets


def _time_data(run: _Run, count: int) -> tuple[list[Any], list[float]]:
    """``count`` batches from the training loader and the seconds each took to come."""
    if len(run.sampler) < count:
        raise DdetrError(
            f"the training set has {len(run.sampler)} batches, fewer than the {count} "
            "steps to time: lower --iters/--warmup or use more pictures"
        )
    timed = list(itertools.islice(timed_batches(run.loader), count))
    return [batch for batch, _ in timed], [seconds for _, seconds in timed]


def _hook_forward_parts(model: torch.nn.Module, timer: PartTimer) -> list[Any]:
    """Forward hooks that time the backbone, the encoder and the decoder."""
    modules = {
        "backbone": model.backbone[0],
        "encoder": model.transformer.encoder,
        "decoder": model.transformer.decoder,
    }
    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(lambda *_, n=name: timer.start(n)))
        handles.append(module.register_forward_hook(lambda *_, n=name: timer.stop(n)))
    return handles


def _time_steps(run: _Run, batches: list[Any], data_s: list[float], skip: int) -> PartTimer:
    """Train on ``batches`` one step each, timing the parts; data times join each step."""
    timer = PartTimer(run.device)
    # A compiled forward pass runs as one graph: its modules' hooks would time nothing.
    handles = [] if run.cfg["compile"] else _hook_forward_parts(run.model, timer)
    run.criterion.timer = timer
    run.model.train()
    try:
        for batch, seconds in zip(batches, data_s, strict=True):
            run.step(batch, timer)
            timer.add("data", seconds)
            timer.next_step()
    finally:
        run.criterion.timer = NO_TIMER
        for handle in handles:
            handle.remove()
    for step in timer.steps:
        if handles:
            step["- rest"] = step["forward"] - sum(step.get(p, 0.0) for p in FORWARD_MODULES)
        for name in (*FORWARD_MODULES, *LOSS_PARTS):
            if name in step:
                step[f"- {name}"] = step.pop(name)
    return timer


def _time_evaluation(run: _Run, pictures: int) -> dict[str, Any] | None:
    """Seconds of one evaluation of the val split (the model's detections and pycocotools),
    measured on its first ``pictures`` and scaled to the whole split."""
    from ddetr_cli.data import collate
    from ddetr_cli.evaluation.coco import EvaluationRun, coco_stats, predict_coco_results

    val = run.splits.val
    if val is None or pictures == 0:
        return None
    count = min(pictures, len(val))
    subset = Subset(val, range(count))
    loader = DataLoader(subset, batch_size=run.cfg["batch_size"], collate_fn=collate)
    start = time.perf_counter()
    found = predict_coco_results(run.model, loader, EvaluationRun.of(run.recipe, run.device))
    model_s = time.perf_counter() - start
    image_ids = [val.image_id(i) for i in range(count)]
    start = time.perf_counter()
    coco_stats(val.coco_ground_truth(), found.results, image_ids)
    coco_s = time.perf_counter() - start
    scale = len(val) / count
    return {
        "pictures_timed": count,
        "pictures": len(val),
        "model_s": model_s * scale,
        "pycocotools_s": coco_s * scale,
        "seconds": (model_s + coco_s) * scale,
    }


def _time_writes(run: _Run) -> dict[str, float]:
    """Seconds of one checkpoint (as checkpoint_last.pth is written) and one metrics line."""
    from ddetr_cli.train.checkpointing import rng_state
    from ddetr_cli.train.report import Reporter
    from ddetr_cli.weights import save_checkpoint

    with tempfile.TemporaryDirectory(prefix="ddetr-bench-") as folder:
        start = time.perf_counter()
        save_checkpoint(
            Path(folder) / "checkpoint_last.pth",
            run.model,
            run.recipe,
            **run.state.state_dict(),
            rng=[rng_state()],
        )
        checkpoint_s = time.perf_counter() - start
        reporter = Reporter(Path(folder), True, progress=False, tensorboard=False)
        record = {
            "type": "step",
            "epoch": 0,
            "step": 1,
            "lr": 1e-4,
            "time": 1.0,
            **dict.fromkeys(run.criterion.weight_dict, 1.0),
        }
        start = time.perf_counter()
        for _ in range(10):
            reporter.write(record)
        line_s = (time.perf_counter() - start) / 10
        reporter.close()
    return {"checkpoint_s": checkpoint_s, "metrics_line_s": line_s}


def _between_steps(
    run: _Run, evaluation: dict[str, Any] | None, writes: dict[str, float]
) -> dict[str, Any]:
    """What a run does between steps, in seconds each time and spread over an epoch's steps
    (ms per step) as the recipe schedules it."""
    cfg = run.cfg
    steps = max(len(run.sampler) // cfg["accumulate"], 1)
    out: dict[str, Any] = {"steps_per_epoch": steps}
    if evaluation is not None:
        ms = 1e3 * evaluation["seconds"] / (steps * cfg["eval_every"])
        out["evaluation"] = {**evaluation, "ms_per_step": ms}
    # checkpoint_last.pth every train.checkpoint_every epochs; checkpoint_best.pth at most
    # once per evaluation, counted here as every time (the worst case).
    saves = 1 / cfg["checkpoint_every"] + (1 / cfg["eval_every"] if evaluation else 0)
    checkpoint_s, line_s = writes["checkpoint_s"], writes["metrics_line_s"]
    out["checkpoint"] = {"seconds": checkpoint_s, "ms_per_step": 1e3 * checkpoint_s * saves / steps}
    out["metrics_line"] = {"seconds": line_s, "ms_per_step": 1e3 * line_s / cfg["log_every"]}
    return out


def run_train_bench(
    recipe: dict[str, Any],
    options: TrainBenchOptions,
    say: Callable[[str], None] = lambda _message: None,
) -> dict[str, Any]:
    """Time a training step of ``recipe`` part by part; returns the JSON-ready report."""
    from ddetr_cli import __version__
    from ddetr_cli.model.variants import describe_model

    check_train_options(options)
    device = resolve_device(options.device)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    recipe = copy.deepcopy(recipe)
    if options.batch_size is not None:
        recipe["train"]["batch_size"] = options.batch_size
    run = _Run(recipe, device)
    batches, data_s = _time_data(run, options.warmup + options.steps)
    batches = [_resized(batch, options.image_size) for batch in batches]
    say(f"{options.warmup} warm-up + {options.steps} timed steps")
    timer = _time_steps(run, batches, data_s, options.warmup)
    medians = timer.median_ms(skip=options.warmup)
    say("timing an evaluation, a checkpoint and a metrics line")
    evaluation = _time_evaluation(run, options.eval_pictures)
    between = _between_steps(run, evaluation, _time_writes(run))
    step = medians["step"]
    parts = [
        {
            "part": name,
            "what": what,
            "median_ms": medians[name],
            "share_of_step": medians[name] / step if name != "data" else None,
        }
        for name, what in PARTS
        if name in medians
    ]
    return {
        "ddetr_version": __version__,
        "model": describe_model(recipe),
        "machine": machine_info(device),
        "protocol": {
            "device": str(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "batch_size": recipe["train"]["batch_size"],
            "image_size": list(options.image_size) if options.image_size else "as loaded",
            "amp": recipe["train"]["amp"],
            "compile": recipe["train"]["compile"],
            "warmup_steps": options.warmup,
            "timed_steps": options.steps,
            "timing": "median over the timed steps of each part, device synchronised around "
            "each part; the parts' medians need not add up to the step's",
        },
        "step_ms": step,
        # With train.compile, the first step holds the compile.
        "first_step_ms": 1e3 * timer.steps[0]["step"],
        "parts": parts,
        "between_steps": between,
    }
