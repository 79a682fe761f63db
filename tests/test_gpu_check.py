"""benchmarks/gpu_check.sh: its dry run on the CPU with pycocotools blocked, a step that fails and a
step cut at its cap (the report keeps every other step); a check stopped or killed mid-step keeps
what it finished; the goals' PASS/FAIL on made-up results; the steps' order and caps."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
LINE = re.compile(r"^\[\s*\d+ s\] (\w+)\s+(ok|failed|cut|skipped|not run)\s", re.M)


def load_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def check_env(tmp_path: Path) -> dict[str, str]:
    """This interpreter as python3, and a pycocotools that cannot be imported (as on the image
    before the carried wheels are installed)."""
    blocker = tmp_path / "blocker" / "pycocotools"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ImportError('pycocotools is blocked by the test')\n"
    )
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(blocker.parent))
    env.pop("OUT", None)
    return env


def orphans(out: Path) -> list[int]:
    """Simulated children of the check writing to ``out`` that are still running."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f" for {out}" in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_dry_run_with_a_failing_and_a_cut_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--dry-run",
            "--out",
            str(out),
            "--simulate",
            "accuracy=fail,fps=cut",
        ],
        env=check_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    gpu_check = load_module()
    names = [s.name for s in gpu_check.STEPS]
    expected = {"preflight": "ok", "build": "skipped", "cuda_tests": "ok", "accuracy": "failed",
                "op_speed": "ok", "fps": "cut", "train": "ok"}  # fmt: skip
    # One line per step, as each finishes, in order.
    lines = LINE.findall(proc.stdout)
    assert [name for name, _ in lines] == names, proc.stdout
    report = json.loads((out / "gpu_cpu_dry_run.json").read_text())
    assert list(report["steps"]) == names
    for name, status in lines:
        assert report["steps"][name]["status"] == status
        assert status == expected.get(name, status), (name, report["steps"][name])
    for name in ("compile", "transformers"):  # optional: skipped in a dry run, or out of time
        assert report["steps"][name]["status"] in ("skipped", "not run")
    steps = report["steps"]
    assert steps["fps"]["cap_s"] == gpu_check.SIMULATED_CUT_CAP_S
    assert "cut at its cap" in steps["fps"]["error"]
    assert "simulated failure" in (out / "gpu_check.log").read_text()
    assert steps["preflight"]["torch"] and steps["preflight"]["problems"]  # no GPU here
    assert steps["cuda_tests"]["counts"]["collected"] > 30
    assert steps["op_speed"]["report"]["results"]
    assert len(steps["train"]["losses"]) == 3 and steps["train"]["summary"]
    assert set(report["goals"]) == set(gpu_check.GOALS)
    md = (out / "gpu_cpu_dry_run.md").read_text()
    for name in names:
        assert f"| {name} | {steps[name]['status']} |" in md
    for goal in report["goals"].values():
        assert f"{goal['verdict']}: {goal['goal']}" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.log", "gpu_cpu_dry_run.json", "gpu_cpu_dry_run.md"]  # fmt: skip


def _start_and_wait_for(tmp_path: Path, step: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "out"
    cmd = ["bash", str(SCRIPT), "--dry-run", "--out", str(out), "--steps", f"preflight,{step}",
           "--simulate", f"{step}=hang"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=check_env(tmp_path), stdout=subprocess.PIPE, text=True)
    report = out / "gpu_cpu_dry_run.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        steps = json.loads(report.read_text())["steps"] if report.is_file() else {}
        if steps.get(step, {}).get("status") == "running" and orphans(out):
            return proc, report
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{step} never started")


@pytest.mark.slow
def test_a_stopped_check_cuts_its_step_and_keeps_the_rest(tmp_path: Path) -> None:
    proc, report = _start_and_wait_for(tmp_path, "train")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    steps = json.loads(report.read_text())["steps"]
    assert steps["preflight"]["status"] == "ok"
    assert steps["train"]["status"] == "cut" and "SIGTERM" in steps["train"]["error"]
    assert orphans(report.parent) == []  # the hanging child went with it
    assert "train" in proc.stdout.read()


@pytest.mark.slow
def test_a_killed_check_leaves_its_finished_steps(tmp_path: Path) -> None:
    proc, report = _start_and_wait_for(tmp_path, "accuracy")
    proc.kill()  # no chance to write anything more
    proc.wait(timeout=60)
    try:
        steps = json.loads(report.read_text())["steps"]  # whole: every write was atomic
        assert steps["preflight"]["status"] == "ok"
        assert steps["accuracy"] == {"status": "running", "cap_s": 30 * 4}
    finally:
        for pid in orphans(report.parent):
            os.kill(pid, signal.SIGKILL)


def test_steps_run_in_the_issue_order_within_360_s() -> None:
    gpu_check = load_module()
    main = [s for s in gpu_check.STEPS if not s.optional]
    assert [s.name for s in main] == [
        "preflight", "build", "cuda_tests", "accuracy", "op_speed", "fps", "train"]  # fmt: skip
    assert sum(s.cap_s for s in main) <= 360
    assert [s.name for s in gpu_check.STEPS if s.optional] == ["compile", "transformers"]
    assert gpu_check.STEPS[-2:] == [s for s in gpu_check.STEPS if s.optional]


def test_out_defaults_to_OUT_and_simulate_is_for_dry_runs(monkeypatch, tmp_path, capsys) -> None:
    gpu_check = load_module()
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.parse_args([]).out == tmp_path
    monkeypatch.delenv("OUT")
    assert gpu_check.parse_args([]).out == ROOT / "benchmarks"
    for argv in (["--simulate", "fps=cut"], ["--dry-run", "--simulate", "fps=explode"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(argv)
    assert "--simulate" in capsys.readouterr().err


def _op_row(part, batch, dtype, pas, backend, ms, floor_ms):
    return {"part": part, "batch": batch, "dtype": dtype, "pass": pas, "backend": backend,
            "ms": ms, "floor_ms": floor_ms}  # fmt: skip


def _fps_row(dtype, batch, mode, fps):
    return {"backend": "kernel", "dtype": dtype, "batch_size": batch, "mode": mode, "fps": fps}


def test_goal_verdicts() -> None:
    gpu_check = load_module()
    op = [
        _op_row("encoder", 1, "fp32", "fwd", "reference", 20.0, 0.5),
        _op_row("encoder", 1, "fp32", "fwd", "kernel", 1.0, 0.5),
        _op_row("encoder", 8, "fp32", "fwd", "reference", 100.0, 4.0),
        _op_row("encoder", 8, "fp32", "fwd", "kernel", 12.5, 4.0),  # 8x: too slow; 3.1x floor
        _op_row("encoder", 8, "bf16", "fwd", "kernel", 7.0, 2.0),
        _op_row("decoder", 1, "fp32", "fwd", "kernel", 1.0, 0.001),  # not a goal row
    ]
    fps = [_fps_row("fp32", 4, "eager", 18.0), _fps_row("bf16", 4, "eager", 30.0)]
    report = {
        "steps": {
            "accuracy": {"status": "failed", "rows": [{}], "error": "beyond tolerance: ..."},
            "op_speed": {"report": {"results": op}},
            "fps": {"report": {"speed": {"results": fps}}},
            "compile": {"report": {"speed": {"results": [_fps_row("fp32", 4, "compile", 25.0)]}}},
        }
    }
    verdicts = {k: g["verdict"] for k, g in gpu_check.evaluate_goals(report).items()}
    assert verdicts == {
        "op_accurate": "FAIL",
        "op_fp32_speedup": "FAIL",
        "op_fp32_floor": "FAIL",
        "op_bf16_faster": "PASS",
        "e2e_bf16_faster": "PASS",
        "e2e_fp32_b4": "PASS",  # the compiled model counts
    }
    unknown = gpu_check.evaluate_goals({"steps": {"accuracy": {"status": "cut"}}})
    assert {g["verdict"] for g in unknown.values()} == {"UNKNOWN"}
