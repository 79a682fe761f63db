"""The pieces of a training run, built in one order for the engine and for ``ddetr bench
--train``: data splits, model (with its weights, its DDP wrapper and its compiled form),
criterion, loaders and the training state. The order decides what the global RNG gives each
piece, so a run and its benchmark start from the same model and batches."""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ddetr_cli import runtime
from ddetr_cli.data import ResumableBatchSampler, Splits, build_datasets, collate
from ddetr_cli.errors import DdetrError
from ddetr_cli.model import build_model
from ddetr_cli.train.classes import resolve_classes
from ddetr_cli.train.criterion import SetCriterion, build_criterion
from ddetr_cli.train.optim import total_optimizer_steps
from ddetr_cli.train.state import TrainState
from ddetr_cli.train.stopping import ignore_sigterm

Batch = tuple[list[Tensor], list[dict[str, Any]]]  # pictures and targets, as the loader gives


@dataclass
class RunParts:
    splits: Splits
    model: nn.Module  # the bare model: evaluation, EMA, checkpoints
    step_model: nn.Module  # what train_step calls: the model, its DDP wrapper, compiled or not
    criterion: SetCriterion
    train_loader: DataLoader
    sampler: ResumableBatchSampler
    val_loader: DataLoader | None
    total_steps: int  # optimiser steps of the whole run
    state: TrainState


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_run_parts(
    recipe: dict[str, Any],
    ctx: runtime.Dist,
    load_weights: Callable[[nn.Module], None] | None = None,
) -> RunParts:
    """Everything a run trains with, from a resolved recipe (whose class count and names the
    data may settle). ``load_weights`` fills the fresh model (a checkpoint, initial weights)
    before it is wrapped; the training state is fresh (``TrainState.load`` continues one)."""
    cfg = recipe["train"]
    splits = build_datasets(recipe)
    resolve_classes(recipe, splits)
    model = build_model(recipe).to(ctx.device)
    model.channels_last = cfg["channels_last"]
    if load_weights is not None:
        load_weights(model)
    step_model: nn.Module = model
    if ctx.enabled:
        # Without auxiliary losses the intermediate refine heads get no gradient.
        step_model = DistributedDataParallel(
            model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=not recipe["model"]["aux_loss"],
        )
    step_model = compile_for_training(step_model, cfg)
    criterion = build_criterion(recipe)
    train_loader, sampler, val_loader = build_loaders(
        splits, cfg, ctx, recipe["data"]["num_workers"]
    )
    total_steps = total_optimizer_steps(cfg, len(sampler))
    state = TrainState.create(model, cfg, ctx.device, total_steps)
    return RunParts(
        splits, model, step_model, criterion, train_loader, sampler, val_loader, total_steps, state
    )


def compile_for_training(model: nn.Module, cfg: dict[str, Any]) -> nn.Module:
    """The module ``train_step`` calls: ``model`` itself, or with train.compile its
    ``torch.compile`` form (the same parameters; Inductor fuses the forward pass and, through
    AOTAutograd, the backward). Evaluation and checkpoints keep using ``model``."""
    if not cfg["compile"]:
        return model
    return torch.compile(model)


def build_loaders(
    splits: Splits, cfg: dict[str, Any], ctx: runtime.Dist, workers: int
) -> tuple[DataLoader, ResumableBatchSampler, DataLoader | None]:
    """(training loader, its resumable batch sampler, val loader or None)."""
    sampler = ResumableBatchSampler(
        splits.train, cfg["batch_size"], ctx.rank, ctx.world_size, shuffle=True, seed=cfg["seed"]
    )
    if len(sampler) == 0:
        raise DdetrError(
            f"the training set ({len(splits.train)} pictures) is smaller than one batch of "
            f"{cfg['batch_size']} per process"
        )
    pin, context = ctx.device.type == "cuda", worker_context(workers)
    loader_gen = torch.Generator().manual_seed(cfg["seed"])  # keeps the global RNG untouched
    train_loader = DataLoader(
        splits.train,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        generator=loader_gen,
        worker_init_fn=ignore_sigterm,
        multiprocessing_context=context,
    )
    if splits.val is None:
        return train_loader, sampler, None
    val_sampler = (
        DistributedSampler(splits.val, shuffle=False, drop_last=False) if ctx.enabled else None
    )
    val_loader = DataLoader(
        splits.val,
        batch_size=cfg["batch_size"],
        sampler=val_sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,  # started once, not at every evaluation
        worker_init_fn=ignore_sigterm,
        multiprocessing_context=context,
    )
    return train_loader, sampler, val_loader


def worker_context(workers: int) -> BaseContext | None:
    """How loader workers start: from a fork server, not as forks of the training process.
    That process has threads (a loader's queue feeder, gloo's), and a fork copies any lock one
    of them holds into the child still held: a val worker forked at an evaluation hung so in
    CPython's after-fork code. None (the platform's default start) without workers or where
    there is no fork server (Windows)."""
    if workers == 0 or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    # Imported once by the server, inherited by every worker it forks (it has no threads).
    context.set_forkserver_preload(["ddetr_cli.data"])
    return context
