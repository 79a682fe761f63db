"""From what ``ddetr train`` was given to what the engine runs: the recipe, the run folder, the
checkpoint to resume, the weights to start from, and notes saying what was decided.

Run folders are never overwritten. A new run whose folder (train.output_dir) already holds a
run goes to the next free name (runs/shapes2, runs/shapes3, ...) when the folder came from the
recipe, and is refused when the user named it (``train.output_dir=D``). ``--resume`` continues a
run with its own recipe.yaml; overrides given with it apply on top (train.epochs=12 extends it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddetr_cli.errors import DdetrError, UsageError
from ddetr_cli.recipe import absolute_data_paths, apply_overrides, load_recipe, load_run_recipe
from ddetr_cli.train.checkpointing import find_resume, read_training_state

RUN_FILES = ("checkpoint_last.pth", "checkpoint_best.pth", "metrics.jsonl", "recipe.yaml")
# Where and on what a run goes, not what it trains: never a reason to refuse a resume.
_NOT_THE_RUN = ("train.output_dir", "train.device", "data.num_workers")
TRAIN_DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainPlan:
    recipe: dict[str, Any]
    weights: str | Path | None = None
    resume: Path | None = None  # the checkpoint to continue from
    next_free_folder: bool = False  # a taken train.output_dir gets the next free name
    notes: list[str] = field(default_factory=list)


def holds_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in RUN_FILES)


def claim_folder(folder: Path, next_free: bool) -> tuple[Path, str | None]:
    """The folder a new run writes to, and a note when it is not ``folder``."""
    if not holds_run(folder):
        return folder, None
    if not next_free:
        raise DdetrError(
            f"{folder} already holds a run: continue it with `ddetr train --resume {folder}`, "
            "or start anew in another train.output_dir (leave it out for the next free name)"
        )
    n = 2
    while holds_run(folder.with_name(f"{folder.name}{n}")):
        n += 1
    new = folder.with_name(f"{folder.name}{n}")
    return new, f"{folder} holds a run (continue it with --resume {folder}); this run: {new}"


def nothing_to_train(run_dir: Path, epochs_done: int, epochs: int) -> str:
    """The line for a resume of a run that has done its epochs (it trains nothing, exit 0, so
    that a job script that resumes until the run is done may run once more)."""
    return (
        f"nothing to train: the run in {run_dir} has done {epochs_done} epochs (train.epochs="
        f"{epochs}); extend it with: ddetr train --resume {run_dir} train.epochs=N "
        f"(N > {epochs_done})"
    )


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip()


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe_differences(given: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """'key: given vs run' for each setting where a recipe file differs from a run's recipe
    (the run folder, device, workers and data-resolved class settings aside)."""
    mine, theirs = _leaves(given), _leaves(run)
    out = []
    for key, value in mine.items():
        if key in _NOT_THE_RUN or value == theirs.get(key):
            continue
        if key in ("model.num_classes", "model.class_names") and value is None:
            continue  # null: the run resolved it from the data
        out.append(f"{key} {value!r} vs {theirs.get(key)!r}")
    return out


def plan_training(
    recipe: Path | None,
    overrides: Sequence[str] = (),
    *,
    weights: str | Path | None = None,
    resume: bool = False,
    resume_from: Path | None = None,
    device: str | None = None,
) -> TrainPlan:
    """What to train; see the module docstring. Raises a one-line error for what cannot be."""
    overrides = list(overrides)
    if recipe is not None and "=" in str(recipe) and not recipe.exists():
        overrides.insert(0, str(recipe))  # `ddetr train --resume-from RUN key=value`
        recipe = None
    if device is not None:
        _check_device(device)
        overrides.append(f"train.device={device}")
    if resume and resume_from is not None:
        raise UsageError("use either --resume or --resume-from, not both")
    if weights is not None and (resume or resume_from is not None):
        raise UsageError("--weights starts a new run; --resume continues one: use one of them")
    if resume_from is not None:
        return _plan_resume(resume_from, recipe, overrides)
    if resume:
        if recipe is None:
            raise UsageError("--resume needs the run: ddetr train --resume runs/NAME")
        if recipe.is_dir():
            return _plan_resume(recipe, None, overrides)
        return _plan_resume(
            Path(load_recipe(recipe, overrides)["train"]["output_dir"]), recipe, overrides
        )
    return _plan_new(recipe, overrides, weights)


def _check_device(device: str) -> None:
    """A UsageError (exit 2, as every command's bad --device) before anything is loaded."""
    from ddetr_cli.runtime import resolve_device

    if device not in TRAIN_DEVICES:
        raise UsageError(
            f"--device {device}: train takes {', '.join(TRAIN_DEVICES)} (each torchrun process "
            "takes its own GPU; CUDA_VISIBLE_DEVICES chooses which)"
        )
    if device == "cuda":
        resolve_device(device)


def _plan_new(recipe: Path | None, overrides: list[str], weights: str | Path | None) -> TrainPlan:
    from ddetr_cli.weights import resolve_weights_path, weights_format

    if recipe is None:
        raise UsageError("name a recipe: ddetr train recipes/shapes.yaml (or --resume RUN)")
    if recipe.is_dir() and holds_run(recipe):
        raise UsageError(
            f"{recipe} is a run folder: continue it with --resume {recipe}, or fine-tune from it "
            f"with a recipe and -w {recipe}"
        )
    notes: list[str] = []
    overrides = _drop_stale_class_names(recipe, overrides, notes)
    resolved = load_recipe(recipe, overrides)
    explicit_dir = any(_key(o) == "train.output_dir" for o in overrides)
    if weights is not None:
        weights_format(weights)  # a missing path or a file that is not weights: said now
        weights = resolve_weights_path(weights)
    return TrainPlan(resolved, weights, None, not explicit_dir, notes)


def _drop_stale_class_names(recipe: Path, overrides: list[str], notes: list[str]) -> list[str]:
    """A new class count set by an override makes the recipe's class names of another length
    stale: drop them (names then come from the data) with a note."""
    keys = [_key(o) for o in overrides]
    if "model.num_classes" not in keys or "model.class_names" in keys:
        return overrides
    base = load_recipe(recipe, [o for o in overrides if _key(o) != "model.num_classes"])
    names = base["model"]["class_names"]
    count = load_recipe(recipe, [*overrides, "model.class_names=null"])["model"]["num_classes"]
    if names is None or len(names) == count:
        return overrides
    notes.append(
        f"model.num_classes is {count}: dropped the recipe's {len(names)} class names "
        f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); the names come from the "
        "data, or set model.class_names=[...]"
    )
    return [*overrides, "model.class_names=null"]


def _plan_resume(target: Path, recipe: Path | None, overrides: list[str]) -> TrainPlan:
    checkpoint = find_resume(target)
    run_dir = checkpoint.parent
    extra = (
        []
        if any(_key(o) == "train.output_dir" for o in overrides)
        else [f"train.output_dir={run_dir}"]
    )
    # The run's paths are absolute (relative ones, from ddetr 0.1, mean the current folder).
    if (run_dir / "recipe.yaml").is_file():
        run_recipe = load_run_recipe(run_dir / "recipe.yaml", [*overrides, *extra])
    else:
        stored = read_training_state(checkpoint).get("recipe") or {}
        stored = absolute_data_paths(stored, os.getcwd())
        run_recipe = apply_overrides(stored, [*overrides, *extra], f"checkpoint {checkpoint}")
    if recipe is not None:
        differences = recipe_differences(load_recipe(recipe, overrides), run_recipe)
        if differences:
            more = f" (+{len(differences) - 3} more)" if len(differences) > 3 else ""
            raise UsageError(
                f"{recipe} differs from the recipe of the run in {run_dir} "
                f"({'; '.join(differences[:3])}{more}): --resume continues the run's own recipe; "
                f"use `ddetr train --resume {run_dir}` with key=value overrides for changes"
            )
    what = " ".join(overrides) if overrides else "no overrides"
    note = f"resuming {checkpoint} with the run's recipe and {what}"
    return TrainPlan(run_recipe, None, checkpoint, False, [note])
