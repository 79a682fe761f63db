"""SIGTERM, what job schedulers, `timeout` and SLURM send before they kill a job, stops a
training as Ctrl-C does: checkpoint_last.pth is saved, the exit status is 143, and the resumed
run ends with the weights and metrics of a run that was never stopped. Real processes, sent the
signal as `timeout` and SLURM send it: to every process of the job (its process group)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ports import free_port
from tiny import TINY_MODEL

from ddetr_cli.weights import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
# A tiny model, 24 steps per epoch (batch 1), a data loader worker process.
TINY = [
    *TINY_MODEL, "model.attention_backend=reference", "data.shapes.train_images=24",
    "data.shapes.val_images=2", "data.num_workers=1", "train.batch_size=1", "train.epochs=2",
    "train.log_every=1",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _train_command(out: Path, *extra: str, processes: int = 1) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                     "--master-port", str(free_port())]  # fmt: skip
    return [*launcher, "-m", "ddetr_cli", "train", str(ROOT / "recipes" / "shapes.yaml"), *TINY,
            f"train.output_dir={out}", "--no-progress", *extra]  # fmt: skip


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return max((r["step"] for r in lines), default=0)


def _run(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` to its end in its own process group; on a timeout the whole group is
    killed (torchrun's children too, which `subprocess.run` would leave behind)."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command[:6]} ran past 300 s; its output ended: {stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _terminated_run(command: list[str], run: Path, after_steps: int) -> subprocess.CompletedProcess:
    """Start `command` in its own process group; SIGTERM the group once `after_steps` steps
    are logged."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while _steps_logged(run) < after_steps:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=240)
    except BaseException:  # a failed test leaves no process of the run behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# What the clock says: elapsed time and each epoch's seconds per step differ from run to run.
CLOCK_KEYS = {"time", "train_s_per_step", "data_s_per_step"}


def _records(run: Path) -> list[dict]:
    """metrics.jsonl without the clock."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in CLOCK_KEYS} for r in lines]


def _assert_same_run(a: Path, b: Path) -> None:
    wa = read_checkpoint(a / "checkpoint_last.pth")["model"]
    wb = read_checkpoint(b / "checkpoint_last.pth")["model"]
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, different[:5]
    assert _records(a) == _records(b)


@pytest.mark.slow
def test_sigterm_saves_and_the_resumed_run_ends_as_an_uninterrupted_one(tmp_path):
    straight = _run(_train_command(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]

    cut = tmp_path / "cut"
    stopped = _terminated_run(_train_command(cut), cut, after_steps=3)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "error: terminated (SIGTERM)" in stopped.stderr
    assert f"terminated (SIGTERM): saved {cut / 'checkpoint_last.pth'} after step" in stopped.stdout
    assert f"continue with --resume {cut}" in stopped.stdout
    ckpt = read_checkpoint(cut / "checkpoint_last.pth")
    assert ckpt["epoch"] == 0 and 3 <= ckpt["batch"] < 24  # mid-epoch
    assert ckpt["step"] == ckpt["batch"] == _steps_logged(cut)  # the last step it logged
    assert not [p.name for p in cut.iterdir() if p.name.endswith(".tmp")]  # written atomically

    resumed = _run(
        [sys.executable, "-m", "ddetr_cli", "train", "--resume", str(cut), "--no-progress"]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(straight_run := tmp_path / "straight", cut)
    assert read_checkpoint(straight_run / "checkpoint_last.pth")["step"] == 48


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_process_after_the_same_step(tmp_path):
    """Every process gets the signal (torchrun forwards it; SLURM signals them all); they agree
    on the step to stop after, and process 0 alone writes the checkpoint, with the RNG state of
    both processes, from which the run resumes exactly."""
    straight = _run(_train_command(tmp_path / "straight", processes=2))
    assert straight.returncode == 0, straight.stderr[-3000:]

    cut = tmp_path / "cut"
    stopped = _terminated_run(_train_command(cut, processes=2), cut, after_steps=3)
    assert stopped.returncode != 0
    assert stopped.stdout.count("terminated (SIGTERM): saved") == 1, stopped.stdout  # process 0
    ckpt = read_checkpoint(cut / "checkpoint_last.pth")
    assert len(ckpt["rng"]) == 2 and ckpt["epoch"] == 0 and 3 <= ckpt["batch"] < 12

    resume = _train_command(cut, processes=2)[:7] + [
        "-m", "ddetr_cli", "train", "--resume", str(cut), "--no-progress"]  # fmt: skip
    resumed = _run(resume)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(tmp_path / "straight", cut)
