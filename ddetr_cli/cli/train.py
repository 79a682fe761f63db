"""The ``ddetr train`` command (registered in cli/__init__.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddetr_cli.cli.console import print_line
from ddetr_cli.cli.options import Overrides

_RecipeOrRun = Annotated[
    Path | None,
    typer.Argument(
        help="Recipe: a YAML file or a packaged recipe's name; with --resume, the run folder "
        "instead.",
        show_default=False,
    ),
]
_StartWeights = Annotated[
    str | None,  # a string, as options.Weights
    typer.Option(
        "--weights",
        "-w",
        help="Start from these weights (a ddetr or official .pth, a run folder's best "
        "checkpoint, a transformers folder or Hub id, .safetensors); class heads of another "
        "class count are re-initialised.",
        show_default=False,
    ),
]
_Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue a run with its own recipe: `--resume runs/NAME`, or a recipe whose "
        "train.output_dir is the run. key=value overrides apply on top (train.epochs=12).",
    ),
]
_ResumeFrom = Annotated[
    Path | None,
    typer.Option(
        "--resume-from", help="Continue from this checkpoint or run folder.", show_default=False
    ),
]
_TrainDevice = Annotated[
    str | None,
    typer.Option(
        "--device", help="auto, cpu or cuda (short for train.device=...).", show_default=False
    ),
]


def train(
    recipe: _RecipeOrRun = None,
    overrides: Overrides = None,
    weights: _StartWeights = None,
    resume: _Resume = False,
    resume_from: _ResumeFrom = None,
    device: _TrainDevice = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar (terminals only).")] = True,
) -> None:
    """Train Deformable DETR as a recipe describes; write a run folder.

    The run folder (train.output_dir) gets recipe.yaml, metrics.jsonl, checkpoint_last.pth and
    checkpoint_best.pth; one line per epoch reports the losses and val AP. A folder that already
    holds a run is never overwritten: the recipe's folder gets the next free name (runs/shapes2),
    an explicit train.output_dir=D is refused. Ctrl-C and SIGTERM (job schedulers, timeout) save
    checkpoint_last.pth first (exit 130, 143); --resume continues exactly where it stopped; a
    finished run is extended with train.epochs=N. Several processes or machines: torchrun.

    Examples:
      ddetr train recipes/shapes.yaml --device cpu
      ddetr train recipes/refine.yaml data.root=/data/coco train.amp=bf16 train.accumulate=4
      ddetr train recipes/refine.yaml data.root=/data/mine model.num_classes=null -w r50.pth
      ddetr train --resume runs/shapes train.epochs=12
      torchrun --nproc-per-node 8 -m ddetr_cli train recipes/refine.yaml data.root=/data/coco
    """
    from ddetr_cli.train.engine import train as run_training
    from ddetr_cli.train.plan import plan_training

    plan = plan_training(
        recipe,
        overrides or [],
        weights=weights,
        resume=resume,
        resume_from=resume_from,
        device=device,
    )
    result = run_training(
        plan.recipe,
        weights=plan.weights,
        resume=plan.resume,
        progress=progress,
        next_free_folder=plan.next_free_folder,
        notes=plan.notes,
    )
    if result is None:  # not the main process of a distributed run
        return
    if result.nothing_to_train:
        print_line(result.nothing_to_train)
    else:
        _print_summary(result)


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from ddetr_cli.train.timing import step_times_line

    table = Table(title="ddetr train", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("run folder", f"{result.output_dir}/")
    table.add_row("epochs", str(result.epochs_done))
    table.add_row("steps", str(result.steps))
    table.add_row("minutes", f"{result.seconds / 60:.1f}")
    if result.step_times:
        table.add_row("s per step", step_times_line(result.step_times))
    if result.last_eval:
        ev = result.last_eval
        table.add_row(
            "last val", f"AP {ev['AP']:.3f}  AP50 {ev['AP50']:.3f}  AP75 {ev['AP75']:.3f}"
        )
    if result.best_ap is not None:
        table.add_row("best val AP", f"{result.best_ap:.3f} (checkpoint_best.pth)")
    if result.stopped_early:
        table.add_row("stopped early", result.stopped_early)
    for note in result.notes:
        table.add_row("note", note)
    Console().print(table)
