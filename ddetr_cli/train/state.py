"""Everything a run must carry from one step to the next, in one object that saves and loads
itself: position (epoch, batch, step), best val AP and patience, optimiser, scheduler, scaler,
the EMA weights and (through checkpoints) every process's RNG state."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ddetr_cli.train.checkpointing import set_rng_state
from ddetr_cli.train.ema import ModelEMA
from ddetr_cli.train.optim import (
    LRScheduler,
    build_optimizer,
    build_scheduler,
    param_groups,
    steps_each_step,
    warmed_up,
    warmup_share,
)


@dataclass
class TrainState:
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler  # StepLR, stepped per epoch, or LambdaLR, per optimiser step
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None = None
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch already trained on
    step: int = 0  # optimiser steps in all
    best_ap: float | None = None
    best_epoch: int | None = None
    evals_since_best: int = 0
    seconds: float = 0.0  # time the run has taken up to this state, over every resume
    # The current epoch's loss sums and step count (its metrics line averages them), so that an
    # epoch interrupted and resumed reports what it would have without the interruption.
    loss_sums: dict[str, float] = field(default_factory=dict)
    loss_steps: int = 0
    warmup_steps: int = 0  # train.warmup_steps (the recipe's, not the checkpoint's)

    @classmethod
    def create(
        cls,
        model: nn.Module,
        cfg: dict[str, Any],
        device: torch.device,
        total_steps: int | None = None,
    ) -> TrainState:
        """A fresh state for ``model`` (the bare model, not its DDP wrapper); ``total_steps``:
        the run's optimiser steps, which a cosine or linear schedule decays over."""
        optimizer = build_optimizer(model, cfg)
        return cls(
            optimizer=optimizer,
            scheduler=build_scheduler(optimizer, cfg, total_steps),
            scaler=torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16"),
            ema=ModelEMA(model, cfg["ema"], cfg["ema_warmup"]) if cfg["ema"] > 0 else None,
            warmup_steps=cfg["warmup_steps"],
        )

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries (the model and the RNG states are added by the caller)."""
        out = {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "best_ap": self.best_ap,
            "best_epoch": self.best_epoch,
            "evals_since_best": self.evals_since_best,
            "seconds": self.seconds,
            "loss_sums": dict(self.loss_sums),
            "loss_steps": self.loss_steps,
        }
        if self.ema is not None:
            out["ema"] = self.ema.state_dict()
        return out

    def load(self, ckpt: dict[str, Any], model: nn.Module, cfg: dict[str, Any], rank: int) -> None:
        """Continue from a checkpoint's training state. Like the official resume, the recipe's
        current learning rates and schedule win over the stored ones."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.batch, self.step = ckpt["epoch"], ckpt["batch"], ckpt["step"]
        self.best_ap = ckpt.get("best_ap")
        self.best_epoch = ckpt.get("best_epoch")
        self.evals_since_best = ckpt.get("evals_since_best", 0)
        self.seconds = float(ckpt.get("seconds", 0.0))
        self.loss_sums = dict(ckpt.get("loss_sums") or {})
        self.loss_steps = int(ckpt.get("loss_steps", 0))
        if self.ema is not None:
            if "ema" in ckpt:
                self.ema.load_state_dict(ckpt["ema"])
            else:  # a run without EMA continued with it: start the average here
                self.ema = ModelEMA(model, cfg["ema"], cfg["ema_warmup"])
        rngs = ckpt.get("rng") or []
        if rank < len(rngs):
            set_rng_state(rngs[rank])
        self._continue_schedule(model, cfg)

    def _continue_schedule(self, model: nn.Module, cfg: dict[str, Any]) -> None:
        """Learning rates where the recipe's schedule has them after the state's epochs (step
        schedule) or optimiser steps (cosine, linear), from the recipe's base rates."""
        groups = self.optimizer.param_groups
        for group, base in zip(groups, param_groups(model, cfg), strict=True):
            group["initial_lr"] = base["lr"]
        scheduler = self.scheduler
        scheduler.base_lrs = [g["initial_lr"] for g in groups]
        if steps_each_step(cfg):  # LambdaLR
            scheduler.last_epoch = self.step
            lrs = [
                base * fn(self.step)
                for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
            ]
        else:  # StepLR
            scheduler.last_epoch, scheduler.step_size = self.epoch, cfg["lr_drop"]
            lrs = scheduler._get_closed_form_lr()
        for group, lr in zip(groups, lrs, strict=True):
            group["lr"] = lr
        scheduler._last_lr = lrs

    def record_eval(self, ap: float, epoch: int) -> bool:
        """Note a val AP; True when it is the best so far."""
        if self.best_ap is None or ap > self.best_ap:
            self.best_ap, self.best_epoch, self.evals_since_best = ap, epoch, 0
            return True
        self.evals_since_best += 1
        return False

    def learning_rates(self, warm_up: bool = True) -> dict[str, float]:
        """Each group's rate for the next optimiser step; without ``warm_up`` the schedule's
        rate, which the warm-up (while there is one) scales down."""
        share = warmup_share(self.step, self.warmup_steps) if warm_up else 1.0
        return {
            g.get("name", str(i)): g["lr"] * share
            for i, g in enumerate(self.optimizer.param_groups)
        }

    def warmed_up(self) -> contextlib.AbstractContextManager[None]:
        """The rates of the next optimiser step: the scheduled ones, warmed up while
        ``step`` < train.warmup_steps."""
        return warmed_up(self.optimizer, warmup_share(self.step, self.warmup_steps))
