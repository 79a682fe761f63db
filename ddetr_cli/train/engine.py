"""The training loop: one function from a resolved recipe to a run folder.

The run folder (train.output_dir) holds recipe.yaml, metrics.jsonl (one JSON object per logged
step and per epoch), checkpoint_last.pth and checkpoint_best.pth (best val AP), all written
atomically by process 0. Checkpoints carry the optimiser, scheduler, scaler, position in the
epoch and every process's RNG state, so ``resume`` continues as if the run never stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ddetr_cli.checkpoint import load_state_dict, save_checkpoint
from ddetr_cli.config import dump_recipe
from ddetr_cli.data import ResumableBatchSampler, build_datasets, collate
from ddetr_cli.errors import DdetrError
from ddetr_cli.evaluate import amp_autocast, evaluate_coco
from ddetr_cli.model import build_model
from ddetr_cli.train import distributed
from ddetr_cli.train.checkpointing import (
    find_resume,
    load_initial_weights,
    read_training_state,
    rng_state,
    set_rng_state,
)
from ddetr_cli.train.criterion import build_criterion
from ddetr_cli.train.optim import build_optimizer, build_scheduler, param_groups

log = logging.getLogger(__name__)
SHOWN_LOSSES = ("loss_ce", "loss_bbox", "loss_giou")


@dataclass
class TrainResult:
    output_dir: Path
    epochs_done: int = 0
    steps: int = 0
    seconds: float = 0.0
    best_ap: float | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Metrics:
    """Appends JSON lines to metrics.jsonl (process 0 only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()


def _resolve_classes(recipe: dict[str, Any], splits, classes_explicit: bool) -> None:
    model = recipe["model"]
    needed = splits.num_classes
    if recipe["data"]["format"] == "shapes":
        needed = len(splits.class_names)
        classes_explicit = True
    if not classes_explicit and needed > 0:
        model["num_classes"] = needed
    elif needed > model["num_classes"]:
        raise DdetrError(
            f"the annotations use category ids up to {needed - 1} but model.num_classes is "
            f"{model['num_classes']}; set model.num_classes={needed} (or leave it unset)"
        )
    if model["class_names"] is None and splits.class_names:
        names = list(splits.class_names)[: model["num_classes"]]
        names += ["N/A"] * (model["num_classes"] - len(names))
        model["class_names"] = names


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
        disable=not enabled,
        transient=False,
    )


def train(
    recipe: dict[str, Any],
    *,
    weights: str | Path | None = None,
    resume: str | Path | bool | None = None,
    classes_explicit: bool = True,
    progress: bool = True,
) -> TrainResult | None:
    """Train the model a resolved recipe describes; see the module docstring. Returns the
    summary in process 0, None in the other processes of a distributed run."""
    recipe = copy.deepcopy(recipe)
    cfg = recipe["train"]
    ctx = distributed.setup(cfg["device"])
    try:
        return _train(recipe, ctx, weights, resume, classes_explicit, progress)
    finally:
        distributed.cleanup()


def _train(recipe, ctx, weights, resume, classes_explicit, progress) -> TrainResult | None:
    cfg = recipe["train"]
    device = ctx.device
    output_dir = Path(cfg["output_dir"])
    result = TrainResult(output_dir)
    _seed_everything(cfg["seed"] + ctx.rank)

    resume_path = find_resume(resume, output_dir) if resume not in (None, False) else None
    state = read_training_state(resume_path) if resume_path else None

    splits = build_datasets(recipe)
    _resolve_classes(recipe, splits, classes_explicit)
    if cfg["amp"] == "fp16" and device.type == "cpu":
        log.warning("train.amp=fp16 on CPU is slow and rarely useful; consider bf16")

    model = build_model(recipe).to(device)
    if state is not None:
        load_state_dict(model, state["model"], str(resume_path))
    elif weights is not None:
        note = load_initial_weights(model, weights)
        result.notes.append(note)
        if ctx.is_main:
            log.warning(note) if "re-initialised" in note else log.info(note)
    bare = model
    if ctx.enabled:
        # Without auxiliary losses the intermediate refine heads get no gradient.
        model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not recipe["model"]["aux_loss"],
        )
    criterion = build_criterion(recipe)
    optimizer = build_optimizer(bare, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16")

    workers = recipe["data"]["num_workers"]
    sampler = ResumableBatchSampler(splits.train, cfg["batch_size"], ctx.rank, ctx.world_size,
                                    shuffle=True, seed=cfg["seed"])  # fmt: skip
    if len(sampler) == 0:
        raise DdetrError(
            f"the training set ({len(splits.train)} pictures) is smaller than one batch of "
            f"{cfg['batch_size']} per process"
        )
    loader_gen = torch.Generator().manual_seed(cfg["seed"])  # keeps the global RNG untouched
    train_loader = DataLoader(
        splits.train, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0, generator=loader_gen,
    )  # fmt: skip
    val_loader = None
    if splits.val is not None:
        val_sampler = (
            DistributedSampler(splits.val, shuffle=False, drop_last=False) if ctx.enabled else None
        )
        val_loader = DataLoader(
            splits.val, batch_size=cfg["batch_size"], sampler=val_sampler, collate_fn=collate,
            num_workers=workers, pin_memory=device.type == "cuda",
        )  # fmt: skip

    epoch, start_batch, step, best_ap = 0, 0, 0, None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        best_ap = state.get("best_ap")
        rngs = state.get("rng") or []
        if ctx.rank < len(rngs):
            set_rng_state(rngs[ctx.rank])
        # Like the official resume, the recipe's current learning rates and lr_drop win.
        for group, base in zip(optimizer.param_groups, param_groups(bare, cfg), strict=True):
            group["initial_lr"] = base["lr"]
        scheduler.step_size = cfg["lr_drop"]
        scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        lrs = scheduler._get_closed_form_lr()
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr

    metrics = _Metrics(output_dir / "metrics.jsonl" if ctx.is_main else None)
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        dump_recipe(recipe, output_dir / "recipe.yaml")
        if state is not None:
            log.info("resumed from %s at epoch %d, batch %d", resume_path, epoch, start_batch)

    def save(path_name: str, next_epoch: int, next_batch: int, extra=None, gather=True):
        # After Ctrl-C the processes may be at different points: no collective call then, and
        # only process 0's RNG state is kept (the others restart theirs from the seed).
        rngs = distributed.all_gather_object(rng_state()) if gather else [rng_state()]
        if not ctx.is_main:
            return
        save_checkpoint(
            output_dir / path_name, bare, recipe, optimizer=optimizer.state_dict(),
            lr_scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), epoch=next_epoch,
            batch=next_batch, step=step, best_ap=best_ap, rng=rngs, **(extra or {}),
        )  # fmt: skip

    max_steps = cfg["max_steps"]
    epochs = cfg["epochs"]
    started = time.perf_counter()
    interrupted = False
    stop = False
    with _progress(progress and ctx.is_main) as bar:
        while epoch < epochs and not stop:
            sampler.set_epoch(epoch, start_batch)
            task = bar.add_task(f"epoch {epoch + 1}/{epochs}", total=len(sampler),
                                completed=start_batch, speed="", losses="")  # fmt: skip
            model.train()
            sums: dict[str, float] = {}
            count = 0
            batch_index = start_batch
            epoch_start = time.perf_counter()
            try:
                for images, targets in train_loader:
                    for failure in (f for t in targets for f in t["failures"]):
                        log.warning("skipped an unreadable picture: %s", failure)
                    losses = _train_step(model, criterion, optimizer, scaler, images, targets,
                                         device, cfg)  # fmt: skip
                    batch_index += 1
                    step += 1
                    count += 1
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v
                    elapsed = time.perf_counter() - epoch_start
                    shown = " ".join(
                        f"{k.removeprefix('loss_')} {losses[k]:.3f}"
                        for k in ("loss", *SHOWN_LOSSES)
                        if k in losses
                    )
                    speed = f"{count / max(elapsed, 1e-9):.2f} it/s"
                    bar.update(task, advance=1, speed=speed, losses=shown)
                    if step % cfg["log_every"] == 0:
                        now = time.perf_counter() - started
                        lr = optimizer.param_groups[0]["lr"]
                        metrics.write({"type": "step", "epoch": epoch, "step": step, "lr": lr,
                                       "time": now, **losses})  # fmt: skip
                    if max_steps and step >= max_steps:
                        stop = True
                        break
            except KeyboardInterrupt:
                interrupted = True
            if interrupted or (stop and batch_index < len(sampler)):
                save("checkpoint_last.pth", epoch, batch_index, gather=not interrupted)
                bar.stop()
                if interrupted:
                    log.warning("interrupted: saved %s; continue with --resume",
                                output_dir / "checkpoint_last.pth")  # fmt: skip
                break
            # The epoch is complete.
            scheduler.step()
            epoch += 1
            start_batch = 0
            record = {"type": "epoch", "epoch": epoch - 1, "step": step,
                      "lr": optimizer.param_groups[0]["lr"],
                      "time": time.perf_counter() - started,
                      **{k: v / max(count, 1) for k, v in sums.items()}}  # fmt: skip
            if criterion.matcher.non_finite_costs:
                record["non_finite_costs"] = criterion.matcher.non_finite_costs
                log.warning("matcher: replaced %d non-finite costs this epoch",
                            criterion.matcher.non_finite_costs)  # fmt: skip
                criterion.matcher.non_finite_costs = 0
            last = epoch == epochs or stop
            if val_loader is not None and (epoch % cfg["eval_every"] == 0 or last):
                stats = evaluate_coco(bare, val_loader, splits.val_coco, device, cfg["amp"],
                                      recipe["model"]["num_detections"])  # fmt: skip
                record.update(stats)
                result.last_eval = stats
                if best_ap is None or stats["AP"] > best_ap:
                    best_ap = stats["AP"]
                    save("checkpoint_best.pth", epoch, 0, {"eval": stats})
            metrics.write(record)
            if epoch % cfg["checkpoint_every"] == 0 or last:
                save("checkpoint_last.pth", epoch, 0)
    result.epochs_done = epoch
    result.steps = step
    result.seconds = time.perf_counter() - started
    result.best_ap = best_ap
    result.interrupted = interrupted
    if interrupted:
        raise KeyboardInterrupt
    return result if ctx.is_main else None


def _train_step(model, criterion, optimizer, scaler, images, targets, device, cfg) -> dict:
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device)}
               for t in targets]  # fmt: skip
    with amp_autocast(device, cfg["amp"]):
        outputs = model(images)
    losses = criterion(outputs, targets)
    total = criterion.total(losses)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    max_norm = cfg["clip_max_norm"] if cfg["clip_max_norm"] > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    # Gradients are already averaged over processes, so every process makes the same choice.
    if scaler.is_enabled() or torch.isfinite(grad_norm):
        scaler.step(optimizer)
    else:
        log.warning("non-finite gradients: step skipped")
    scaler.update()
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["loss"] = float(total.detach())
    out["grad_norm"] = float(grad_norm)
    return out
