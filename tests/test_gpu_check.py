"""benchmarks/gpu_check.sh: its dry run on the CPU (every section in a tiny CPU form or skipped,
the report written; about a minute), and the PASS/FAIL evaluation of the goals on made-up
results."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def load_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_the_report(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_cpu_dry_run.json").read_text())
    md = (tmp_path / "gpu_cpu_dry_run.md").read_text()
    gpu_check = load_module()
    names = [name for name, _, _ in gpu_check.SECTIONS]
    assert list(report["sections"]) == names
    for name, section in report["sections"].items():
        assert section["status"] in ("ok", "skipped"), (name, section)
    assert report["sections"]["train"]["runs"][0]["finite"]
    assert report["sections"]["versions"]["torch"]
    assert set(report["goals"]) == set(gpu_check.GOALS)
    for goal in report["goals"].values():
        assert goal["verdict"] in ("PASS", "FAIL", "UNKNOWN")
        assert f"**{goal['verdict']}** {goal['goal']}" in md
        assert f"{goal['verdict']}: {goal['goal']}" in proc.stdout
    # The benchmark commands ran in their tiny CPU form and their reports were read.
    assert report["sections"]["op"]["report"]["results"]
    assert report["sections"]["fps"]["report"]["speed"]["results"][0]["fps"] > 0


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
    fps = [
        _fps_row("fp32", 4, "eager", 18.0),
        _fps_row("fp32", 4, "compile", 25.0),
        _fps_row("bf16", 4, "eager", 30.0),
    ]
    report = {
        "sections": {
            "op": {"report": {"results": op}},
            "fps": {"report": {"speed": {"results": fps}}},
        }
    }
    goals = gpu_check.evaluate_goals(report)
    verdicts = {k: g["verdict"] for k, g in goals.items()}
    assert verdicts == {
        "op_fp32_speedup": "FAIL",
        "op_fp32_floor": "FAIL",
        "op_bf16_faster": "PASS",
        "e2e_bf16_faster": "PASS",
        "e2e_fp32_b4": "PASS",  # the compiled model counts
    }
    assert gpu_check.evaluate_goals({"sections": {}})["e2e_fp32_b4"]["verdict"] == "UNKNOWN"


def test_a_failing_section_does_not_stop_the_others(tmp_path: Path, monkeypatch) -> None:
    gpu_check = load_module()

    def boom(ctx):
        raise RuntimeError("simulated failure")

    def fine(ctx):
        return {"value": 1}

    monkeypatch.setattr(gpu_check, "SECTIONS", [("a", boom, 0), ("b", fine, 0)])
    monkeypatch.setenv("DDETR_CACHE_DIR", str(tmp_path / "cache"))  # Context sets it: restored
    args = gpu_check.parse_args(["--dry-run", "--out-dir", str(tmp_path)])
    ctx = gpu_check.Context(args)
    assert gpu_check.run_all(ctx, None) == 1
    report = json.loads((tmp_path / "gpu_cpu_dry_run.json").read_text())
    assert report["sections"]["a"]["status"] == "failed"
    assert "simulated failure" in report["sections"]["a"]["error"]
    assert report["sections"]["b"]["status"] == "ok" and report["sections"]["b"]["value"] == 1


def test_a_section_cut_off_by_the_budget_is_a_timeout(tmp_path: Path, monkeypatch) -> None:
    gpu_check = load_module()

    def slow(ctx):
        raise gpu_check.SectionError("child stopped", {"run": {"rc": "timeout", "seconds": 9}})

    monkeypatch.setattr(gpu_check, "SECTIONS", [("slow", slow, 0)])
    monkeypatch.setenv("DDETR_CACHE_DIR", str(tmp_path / "cache"))
    ctx = gpu_check.Context(gpu_check.parse_args(["--dry-run", "--out-dir", str(tmp_path)]))
    assert gpu_check.run_all(ctx, None) == 0
    report = json.loads((tmp_path / "gpu_cpu_dry_run.json").read_text())
    assert report["sections"]["slow"]["status"] == "timeout"
    assert "| slow | timeout |" in (tmp_path / "gpu_cpu_dry_run.md").read_text()
