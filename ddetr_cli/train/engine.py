"""The training loop: from a resolved recipe to a run folder.

The run folder (train.output_dir) holds recipe.yaml, metrics.jsonl (one JSON object per logged
step and per epoch), checkpoint_last.pth and checkpoint_best.pth (best val AP; the EMA weights
when train.ema is on), all written atomically by process 0. Checkpoints carry the whole
``TrainState`` (optimiser, scheduler, scaler, EMA, position in the epoch, best AP, patience)
and every process's RNG state, so a resume continues as if the run never stopped. Ctrl-C and
SIGTERM (``train.stopping``) save checkpoint_last.pth before the process ends. A new run never
overwrites a folder that holds one (see ``train.plan``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddetr_cli import runtime
from ddetr_cli.data.dataset import DetectionDataset
from ddetr_cli.errors import DdetrError, Terminated
from ddetr_cli.evaluation.coco import EvaluationRun, evaluate_coco
from ddetr_cli.recipe import dump_recipe
from ddetr_cli.runtime import amp_autocast
from ddetr_cli.train.checkpointing import (
    load_initial_weights,
    read_training_state,
    rng_state,
)
from ddetr_cli.train.criterion import SetCriterion
from ddetr_cli.train.optim import steps_each_step
from ddetr_cli.train.parts import Batch, build_run_parts, seed_everything
from ddetr_cli.train.plan import claim_folder, nothing_to_train
from ddetr_cli.train.report import Reporter, duration, short_losses
from ddetr_cli.train.state import TrainState
from ddetr_cli.train.stopping import StopRequest
from ddetr_cli.train.timing import NO_TIMER, StepClock, Timer, timed_batches
from ddetr_cli.weights import load_state_dict, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    epochs_done: int = 0
    steps: int = 0
    seconds: float = 0.0
    best_ap: float | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    stopped_early: str | None = None  # why patience ended the run
    notes: list[str] = field(default_factory=list)
    nothing_to_train: str | None = None  # a resumed run that had done its epochs: why not
    step_times: dict[str, float] = field(default_factory=dict)  # StepClock.run_medians()


def train(
    recipe: dict[str, Any],
    *,
    weights: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    next_free_folder: bool = False,
    notes: list[str] | tuple[str, ...] = (),
) -> TrainResult | None:
    """Train the model a resolved recipe describes; see the module docstring.

    ``resume``: the checkpoint to continue from (``checkpointing.find_resume`` turns a run
    folder into one). ``next_free_folder``: a train.output_dir that already holds a run becomes
    the next free name instead of an error. Returns the summary in process 0, None in the other
    processes of a distributed run."""
    recipe = copy.deepcopy(recipe)
    runtime.keep_freed_memory()
    ctx = runtime.setup_distributed(recipe["train"]["device"])
    try:
        ckpt = read_training_state(Path(resume)) if resume is not None else None
        if ckpt is not None and ckpt["epoch"] >= recipe["train"]["epochs"]:
            return _already_done(recipe, ckpt) if ctx.is_main else None
        trainer = Trainer(
            recipe, ctx, weights, ckpt, resume, progress, next_free_folder, list(notes)
        )
        return trainer.run()
    finally:
        runtime.cleanup_distributed()


def _already_done(recipe: dict[str, Any], ckpt: dict[str, Any]) -> TrainResult:
    """The summary of a resumed run that has done its epochs: nothing is trained or written."""
    output_dir = Path(recipe["train"]["output_dir"])
    why = nothing_to_train(output_dir, ckpt["epoch"], recipe["train"]["epochs"])
    return TrainResult(
        output_dir,
        ckpt["epoch"],
        ckpt["step"],
        float(ckpt.get("seconds", 0.0)),
        ckpt.get("best_ap"),
        nothing_to_train=why,
    )


def _claim(cfg: dict[str, Any], ctx: runtime.Dist, next_free: bool) -> tuple[Path, str | None]:
    """Process 0 picks the run folder; every process gets its choice (or its error)."""
    decided: tuple[str, str | None] | str = ""
    if ctx.is_main:
        try:
            folder, note = claim_folder(Path(cfg["output_dir"]), next_free)
            decided = (str(folder), note)
        except DdetrError as exc:
            decided = str(exc)
    decided = runtime.all_gather_object(decided)[0]
    if isinstance(decided, str):
        raise DdetrError(decided)
    return Path(decided[0]), decided[1]


def _to_device(
    images: list[Tensor], targets: list[dict[str, Any]], device: torch.device, dtype: torch.dtype
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    images = [img.to(device, dtype=dtype, non_blocking=True) for img in images]
    targets = [
        {"labels": t["labels"].to(device), "boxes": t["boxes"].to(device, dtype=dtype)}
        for t in targets
    ]
    return images, targets


def train_step(
    model: nn.Module,
    criterion: SetCriterion,
    state: TrainState,
    batches: list[Batch],
    cfg: dict[str, Any],
    device: torch.device,
    distributed: bool = False,
    timer: Timer = NO_TIMER,
) -> dict[str, float]:
    """One optimiser step over ``batches`` (train.accumulate of them, or fewer at the end of an
    epoch): their gradients add up with every loss normalised by the target boxes of all of
    them, so the update equals that of one batch holding all their pictures. ``timer``
    (``timing.PartTimer``) times the forward pass, losses, backward pass and optimiser."""
    dtype = next(model.parameters()).dtype
    batches = [_to_device(images, targets, device, dtype) for images, targets in batches]
    num_boxes = criterion.num_boxes([t for _, ts in batches for t in ts], device)
    state.optimizer.zero_grad(set_to_none=True)
    out: dict[str, float] = {}
    for i, (images, targets) in enumerate(batches):
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last or not distributed else model.no_sync()
        with sync:
            with timer("forward"), amp_autocast(device, cfg["amp"]):
                outputs = model(images)
            with timer("losses"):
                losses = criterion(outputs, targets, num_boxes=num_boxes)
                losses["loss"] = criterion.total(losses)
            with timer("backward"):
                state.scaler.scale(losses["loss"]).backward()
        # One host sync for all the numbers (float64 holds float32 and float64 values exactly).
        values = torch.stack([v.detach().to(torch.float64) for v in losses.values()]).tolist()
        for key, value in zip(losses, values, strict=True):
            # Losses add up over the batches; other numbers (cardinality error) are averaged.
            share = 1.0 if key.startswith("loss") else 1.0 / len(batches)
            out[key] = out.get(key, 0.0) + value * share
    with timer("optimizer"):
        out["grad_norm"] = _optimizer_step(state, cfg)
    return out


def _optimizer_step(state: TrainState, cfg: dict[str, Any]) -> float:
    """Unscale, clip, step (skipped on non-finite gradients without a scaler); the norm."""
    scaler, optimizer = state.scaler, state.optimizer
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    max_norm = cfg["clip_max_norm"] if cfg["clip_max_norm"] > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))  # the one host sync
    # Gradients are already averaged over processes, so every process makes the same choice.
    if scaler.is_enabled() or math.isfinite(grad_norm):
        with state.warmed_up():
            scaler.step(optimizer)
    else:
        log.warning("non-finite gradients: step skipped")
    scaler.update()
    return grad_norm


def _kernel_build_line(recipe: dict[str, Any], device: torch.device) -> str | None:
    """A line before the attention kernel's first compile (about 15 s on a CPU), which would
    otherwise pass in silence before the first step; None when nothing is to be compiled."""
    from ddetr_cli.ops import build
    from ddetr_cli.ops.kernel import DISABLE_ENV

    if recipe["model"]["attention_backend"] == "reference":
        return None
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    folder = build.pending_build(device.type)
    if folder is None:
        return None
    how_long = "about 15 s" if device.type == "cpu" else "minutes"
    return (
        f"compiling the {device.type} attention kernel (first use only, {how_long}) into {folder}"
    )


def _count(dataset: DetectionDataset) -> str:
    """'N pictures, M boxes' (boxes where the dataset knows them without reading pictures)."""
    boxes = dataset.box_count()
    return f"{len(dataset)} pictures" + (f", {boxes} boxes" if boxes is not None else "")


class Trainer:
    """One run: built from the recipe, then ``run()``. Its mutable state is ``self.state``."""

    def __init__(
        self,
        recipe: dict[str, Any],
        ctx: runtime.Dist,
        weights: str | Path | None,
        ckpt: dict[str, Any] | None,
        resume: str | Path | None,
        progress: bool,
        next_free: bool,
        notes: list[str],
    ) -> None:
        self.recipe, self.ctx, self.cfg = recipe, ctx, recipe["train"]
        self.device, self.notes, self.stop = ctx.device, notes, False
        self.last_eval: dict[str, float] = {}
        self.stopped_early: str | None = None
        self.stop_request = StopRequest()
        self.clock = StepClock()
        self._t0, self._seconds_before = time.perf_counter(), 0.0
        cfg = self.cfg
        seed_everything(cfg["seed"] + ctx.rank)
        if ckpt is None:
            folder, note = _claim(cfg, ctx, next_free)
            cfg["output_dir"] = str(folder)
            self.notes += [note] if note else []
        self.output_dir = Path(cfg["output_dir"])
        if cfg["amp"] == "fp16" and self.device.type == "cpu":
            log.warning("train.amp=fp16 on CPU is slow and rarely useful; consider bf16")
        load = functools.partial(self._load_weights, ckpt=ckpt, resume=resume, weights=weights)
        parts = build_run_parts(recipe, ctx, load)
        self.splits, self.bare, self.model = parts.splits, parts.model, parts.step_model
        self.criterion, self.state = parts.criterion, parts.state
        self.train_loader, self.sampler = parts.train_loader, parts.sampler
        self.val_loader, self.total_steps = parts.val_loader, parts.total_steps
        if ckpt is not None:
            self.state.load(ckpt, self.bare, cfg, ctx.rank)
            self._seconds_before = self.state.seconds  # the run's time counts from its start
        if ctx.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            dump_recipe(recipe, self.output_dir / "recipe.yaml")
        self.reporter = Reporter(self.output_dir, ctx.is_main, progress, cfg["tensorboard"])
        if ckpt is not None:
            self.reporter.forget_after(self.state.step)
        self._report_start(ckpt, resume)

    def _load_weights(
        self,
        model: nn.Module,
        ckpt: dict[str, Any] | None,
        resume: str | Path | None,
        weights: str | Path | None,
    ) -> None:
        """The resumed checkpoint's weights, or the initial ones of ``--weights`` (noted)."""
        if ckpt is not None:
            load_state_dict(model, ckpt["model"], str(resume))
        elif weights is not None:
            self.notes.append(load_initial_weights(model, weights))

    def _schedule_words(self) -> str:
        cfg = self.cfg
        steps = cfg["warmup_steps"]
        warmup = f"linear warm-up over {steps:,} steps, then " if steps else ""
        if steps_each_step(cfg):
            return f"{warmup}{cfg['lr_schedule']} decay to 0 over {self.total_steps:,} steps"
        if cfg["lr_drop"] >= cfg["epochs"]:
            return f"{warmup}constant (train.lr_drop after the last epoch)"
        return f"{warmup}x0.1 every {cfg['lr_drop']} epochs"

    def _report_start(self, ckpt: dict[str, Any] | None, resume: str | Path | None) -> None:
        cfg, splits, say = self.cfg, self.splits, self.reporter.line
        for note in self.notes:
            say(f"note: {note}")
        say(f"run folder {self.output_dir}/")
        data = f"data: train {_count(splits.train)}"
        if splits.val is not None:
            data += f"; val {_count(splits.val)}"
        else:
            data += "; no val split (no val AP, no checkpoint_best.pth)"
        names = self.recipe["model"]["class_names"] or []
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        say(f"{data}; {self.recipe['model']['num_classes']} classes ({shown})")
        b, a, w = cfg["batch_size"], cfg["accumulate"], self.ctx.world_size
        say(
            f"batch {b * a * w} per optimiser step = {b} pictures x {a} accumulated x {w} "
            f"process{'es' if w > 1 else ''}"
        )
        lrs = ", ".join(f"{k} {v:.2e}" for k, v in self.state.learning_rates(warm_up=False).items())
        ema = f"; EMA decay {cfg['ema']}" if cfg["ema"] > 0 else ""
        say(f"learning rates: {lrs}; {self._schedule_words()}{ema}")
        building = _kernel_build_line(self.recipe, self.device)
        if building:
            say(building)
        if cfg["compile"]:
            say(
                "train.compile: the first steps wait for torch.compile (minutes on a CPU the "
                "first time; its cache makes later runs start in seconds)"
            )
        if ckpt is not None:
            st = self.state
            say(
                f"resumed from {resume}: epoch {st.epoch + 1}/{cfg['epochs']}, batch {st.batch}, "
                f"step {st.step}"
            )

    def run(self) -> TrainResult | None:
        try:
            with self.stop_request.installed():  # SIGTERM is noted, never fatal, to the end
                self._finish(self._train_epochs())
        finally:
            self.reporter.close()
        return self._result() if self.ctx.is_main else None

    def _train_epochs(self) -> str:
        """Epochs to the end of the run, or to where it stops: the outcome of ``run_epoch``."""
        st = self.state
        while st.epoch < self.cfg["epochs"]:
            outcome = self.run_epoch()
            if outcome != "done" or self.end_epoch():
                return outcome
            if self._stop_requested():  # SIGTERM during the evaluation
                return "terminated"
        return "done"

    def _finish(self, outcome: str) -> None:
        """Save and say so when the run stops before its end; Ctrl-C and SIGTERM then go on
        as the exceptions the CLI turns into exit statuses 130 and 143."""
        st, last = self.state, self.output_dir / "checkpoint_last.pth"
        resume = f"continue with --resume {self.output_dir}"
        if outcome == "terminated":
            self.save(last.name)
            self.reporter.line(f"terminated (SIGTERM): saved {last} after step {st.step}; {resume}")
            raise Terminated
        if outcome == "interrupted":
            self.save(last.name, gather=False)
            self.reporter.line(f"interrupted: saved {last}; {resume}")
            raise KeyboardInterrupt
        if outcome == "stopped":
            self.save(last.name)
            self.reporter.line(
                f"stopped after train.max_steps={self.cfg['max_steps']} steps "
                f"(epoch {st.epoch + 1}, batch {st.batch}/{len(self.sampler)})"
                "; saved checkpoint_last.pth"
            )

    def _result(self) -> TrainResult:
        st = self.state
        return TrainResult(
            self.output_dir,
            st.epoch,
            st.step,
            self._elapsed(),
            st.best_ap,
            self.last_eval,
            self.stopped_early,
            self.notes,
            step_times=self.clock.run_medians(),
        )

    def _stop_requested(self) -> bool:
        return self.stop_request.agreed(self.device, self.ctx.enabled)

    def run_epoch(self) -> str:
        """Train to the end of the epoch: 'done', 'stopped' (train.max_steps, mid-epoch),
        'terminated' (SIGTERM, after the step under way) or 'interrupted' (Ctrl-C); the state
        is that after the last complete optimiser step."""
        st, cfg = self.state, self.cfg
        self.sampler.set_epoch(st.epoch, st.batch)
        self.reporter.start_epoch(st.epoch, cfg["epochs"], len(self.sampler), st.batch)
        self.model.train()
        self.clock.start_epoch()
        if st.batch == 0:
            st.loss_sums, st.loss_steps = {}, 0
        group: list = []
        waited = 0.0
        try:
            for (images, targets), seconds in timed_batches(self.train_loader):
                waited += seconds
                for failure in (f for t in targets for f in t["failures"]):
                    log.warning("skipped an unreadable picture: %s", failure)
                group.append((images, targets))
                if len(group) < cfg["accumulate"] and st.batch + len(group) < len(self.sampler):
                    continue
                started = time.perf_counter()
                losses = train_step(
                    self.model, self.criterion, st, group, cfg, self.device, self.ctx.enabled
                )
                if st.ema is not None:
                    st.ema.update(self.bare)
                self.clock.add(waited, time.perf_counter() - started)
                st.batch, st.step = st.batch + len(group), st.step + 1
                if steps_each_step(cfg):
                    st.scheduler.step()
                self._after_step(losses, len(group))
                group, waited = [], 0.0
                if cfg["max_steps"] and st.step >= cfg["max_steps"]:
                    self.stop = True
                    break
                if self._stop_requested():
                    return "terminated"
        except KeyboardInterrupt:
            return "interrupted"
        return "stopped" if self.stop and st.batch < len(self.sampler) else "done"

    def _after_step(self, losses: dict[str, float], batches: int) -> None:
        st = self.state
        st.loss_steps += 1
        for key, value in losses.items():
            st.loss_sums[key] = st.loss_sums.get(key, 0.0) + value
        self.reporter.advance(batches, losses)
        if st.step % self.cfg["log_every"] == 0:
            rates = st.learning_rates()
            record = {
                "type": "step",
                "epoch": st.epoch,
                "step": st.step,
                "lr": next(iter(rates.values())),
                "time": self._elapsed(),
                **losses,
            }
            self.reporter.write(record, rates)

    def _elapsed(self) -> float:
        """Seconds of the whole run: this process's and those of the runs it resumes."""
        return self._seconds_before + time.perf_counter() - self._t0

    def end_epoch(self) -> bool:
        """Scheduler step, evaluation, metrics line, checkpoints; True when the run ends."""
        st, cfg = self.state, self.cfg
        if not steps_each_step(cfg):
            st.scheduler.step()
        st.epoch, st.batch = st.epoch + 1, 0
        record = {
            "type": "epoch",
            "epoch": st.epoch - 1,
            "step": st.step,
            "lr": next(iter(st.learning_rates().values())),
            "time": self._elapsed(),
            **{k: v / max(st.loss_steps, 1) for k, v in st.loss_sums.items()},
            **self.clock.epoch_medians(),
        }
        matcher = self.criterion.matcher
        if matcher.non_finite_costs:
            record["non_finite_costs"] = matcher.non_finite_costs
            log.warning(
                "matcher: replaced %d non-finite costs this epoch", matcher.non_finite_costs
            )
            matcher.non_finite_costs = 0
        last = st.epoch == cfg["epochs"] or self.stop
        best = False
        if self.val_loader is not None and (st.epoch % cfg["eval_every"] == 0 or last):
            best = self._evaluate(record)
            last = last or self._out_of_patience()
        self.reporter.write(record)
        self.reporter.line(self._epoch_line(record, best))
        if st.epoch % cfg["checkpoint_every"] == 0 or last:
            self.save("checkpoint_last.pth")
        if self.stopped_early:
            self.reporter.line(self.stopped_early)
        return last

    def _evaluate(self, record: dict[str, Any]) -> bool:
        """Val AP (of the EMA weights when on) into ``record``; saves a new best checkpoint."""
        st = self.state
        model = st.ema.module if st.ema is not None else self.bare
        stats = evaluate_coco(model, self.val_loader, EvaluationRun.of(self.recipe, self.device))
        record.update(stats)
        self.last_eval = stats
        if not st.record_eval(stats["AP"], st.epoch):
            return False
        if st.ema is None:
            self.save("checkpoint_best.pth", eval=stats)
        elif self.ctx.is_main:  # the EMA weights, to evaluate and fine-tune from
            save_checkpoint(
                self.output_dir / "checkpoint_best.pth",
                st.ema.module,
                self.recipe,
                epoch=st.epoch,
                step=st.step,
                eval=stats,
                ema_weights=True,
                environment=self._environment(),
            )
        return True

    def _out_of_patience(self) -> bool:
        st, patience = self.state, self.cfg["patience"]
        if not patience or st.evals_since_best < patience:
            return False
        self.stopped_early = (
            f"stopping: val AP has not improved for {patience} evaluations (best "
            f"{st.best_ap:.3f} after epoch {st.best_epoch}; checkpoint_best.pth)"
        )
        return True

    def _epoch_line(self, record: dict[str, Any], best: bool) -> str:
        parts = [f"epoch {record['epoch'] + 1}/{self.cfg['epochs']}", short_losses(record)]
        if "AP" in record:
            parts.append(
                f"val AP {record['AP']:.3f}  AP50 {record['AP50']:.3f}"
                + ("  (best)" if best else "")
            )
        parts.append(duration(self.reporter.epoch_seconds()))
        return "  ".join(p for p in parts if p)

    def save(self, name: str, gather: bool = True, **extra: Any) -> None:
        """A checkpoint of the model and the whole state. After Ctrl-C the processes may be at
        different points: no collective call then (``gather=False``), and only process 0's RNG
        state is kept (the others restart theirs from the seed)."""
        rngs = runtime.all_gather_object(rng_state()) if gather else [rng_state()]
        if not self.ctx.is_main:
            return
        self.state.seconds = self._elapsed()
        save_checkpoint(
            self.output_dir / name,
            self.bare,
            self.recipe,
            **self.state.state_dict(),
            rng=rngs,
            environment=self._environment(),
            **extra,
        )

    def _environment(self) -> dict[str, Any]:
        """``runtime.numerics`` and the attention backend in use: what a run's figures depend
        on besides the code, the data and the seed."""
        from ddetr_cli.ops.backends import resolve_backend

        backend = resolve_backend(self.device, self.recipe["model"]["attention_backend"])[0]
        return {**runtime.numerics(self.device), "attention_backend": backend}
