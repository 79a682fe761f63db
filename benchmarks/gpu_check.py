"""One-shot GPU check of the CUDA kernel and the model: benchmarks/gpu_check.sh on a GPU machine.

Sections, in order of priority, each isolated (a failure is recorded in the report and the next
section runs; GPU work runs in child processes, so a crashed CUDA context cannot spoil the rest):

  versions   driver, torch, CUDA, GPU name and capability, nvcc
  build      the CUDA kernel built for this GPU into a fresh cache (DDETR_CACHE_DIR), smoke test
  pytest     pytest -m gpu (kernel vs reference, misaligned inputs, fp16/bf16 at D=30/256, streams,
             > 2^31 output elements, bit-identical forward, determinism alert, autograd, compile)
  op         ddetr bench op: encoder/decoder shapes of an 800x1333 picture, fp32/fp16/bf16,
             forward and forward+backward, kernel vs reference backend and the memory floor
  fps        ddetr bench --fps: plain R50, batch 1 and 4, fp32 and bf16, eager (peak memory)
  train      a few training steps of recipes/refine.yaml at 800x1066 under bf16 and fp16 (scaler)
  fps_compile  the same FPS table with torch.compile
  transformers benchmarks/compare_transformers_gpu.py, when transformers is installed

Everything goes to benchmarks/gpu_<device>.json and .md (rewritten after every section), with a
PASS/FAIL line per goal: fp32 op forward >= 10x the reference and <= 3x the memory floor; bf16
faster than fp32; plain R50 fp32 batch 4 faster than the official 19.4 FPS (V100). The whole run
keeps to --budget-s (default 450 s): a section that no longer fits is skipped, not started.

--dry-run checks this script's own logic on a CPU-only machine: each section runs in a tiny CPU
form (the same commands on a small picture and model) or is listed as skipped (build, compile,
transformers), and the report goes to a temporary folder (or --out-dir).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OFFICIAL_V100_FPS_B4 = 19.4  # plain R50, fp32, batch 4 (official README)

GOALS = {
    "op_fp32_speedup": "fp32 op forward >= 10x the reference backend (encoder, every batch)",
    "op_fp32_floor": "fp32 op forward within 3x of the memory floor (encoder, every batch)",
    "op_bf16_faster": "bf16 op forward faster than fp32 (encoder, largest batch)",
    "e2e_bf16_faster": "bf16 end-to-end faster than fp32 (plain R50, batch 4, eager)",
    "e2e_fp32_b4": f"plain R50 fp32 batch 4 faster than {OFFICIAL_V100_FPS_B4} FPS (best mode)",
}


# --------------------------------------------------------------------------- helpers


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def slug(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "unknown"


def run_cmd(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs a child process; returns rc, seconds and the tails of its output (never raises)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, timeout),
        )
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    except OSError as e:
        rc, out, err = "error", "", str(e)
    return {
        "cmd": " ".join(cmd),
        "rc": rc,
        "seconds": round(time.perf_counter() - t0, 1),
        "stdout_tail": out[-3000:],
        "stderr_tail": err[-3000:],
    }


def ddetr_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ddetr_cli", *args]


def child_section(name: str, ctx: Context, timeout: float, extra: list[str] = ()) -> dict:
    """Runs one in-Python section of this script in a child process and returns its JSON."""
    out = ctx.tmp / f"section_{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--section-out"]
    cmd += [str(out), *(["--dry-run"] if ctx.dry_run else []), *extra]
    proc = run_cmd(cmd, timeout, ctx.env)
    if out.is_file():
        result = json.loads(out.read_text())
        result["child"] = {k: proc[k] for k in ("rc", "seconds")}
        if proc["rc"] != 0:
            result["child"]["stderr_tail"] = proc["stderr_tail"]
        return result
    raise SectionError(f"child section {name} wrote nothing: rc={proc['rc']}",
                       {"run": {k: proc[k] for k in ("rc", "seconds", "stderr_tail")}})  # fmt: skip


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.dry_run: bool = args.dry_run
        self.budget_s: float = args.budget_s
        self.t0 = time.perf_counter()
        self.out_dir: Path = args.out_dir
        self.tmp = Path(tempfile.mkdtemp(prefix="ddetr_gpu_check_"))
        self.env = dict(os.environ)
        # A fresh kernel cache: the kernel is built for the present GPU by this run.
        self.env["DDETR_CACHE_DIR"] = str(self.tmp / "kernel_cache")
        self.env.setdefault("PYTHONPATH", str(ROOT))
        os.environ["DDETR_CACHE_DIR"] = self.env["DDETR_CACHE_DIR"]
        self.report: dict[str, Any] = {
            "script": "benchmarks/gpu_check.sh" + (" --dry-run" if self.dry_run else ""),
            "started_utc": now(),
            "dry_run": self.dry_run,
            "budget_s": self.budget_s,
            "sections": {},
            "goals": {},
        }
        self.device_slug = "cpu_dry_run" if self.dry_run else "unknown_gpu"

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)


# --------------------------------------------------------------------------- sections


def section_versions(ctx: Context) -> dict[str, Any]:
    import platform

    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            memory_gib=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
        )
        ctx.device_slug = slug(props.name)
        # Build for this GPU only, whatever the caller's environment says.
        ctx.env["TORCH_CUDA_ARCH_LIST"] = info["capability"]
    smi = shutil.which("nvidia-smi")
    if smi:
        q = run_cmd([smi, "--query-gpu=driver_version,name", "--format=csv,noheader"], 30)
        info["driver"] = q["stdout_tail"].strip().splitlines()[0] if q["stdout_tail"] else None
    nvcc = shutil.which("nvcc")
    if nvcc:
        v = run_cmd([nvcc, "--version"], 30)["stdout_tail"].strip().splitlines()
        info["nvcc"] = v[-1] if v else None
    try:
        info["transformers"] = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        info["transformers"] = None
    if not torch.cuda.is_available() and not ctx.dry_run:
        raise RuntimeError("no CUDA device visible to torch")
    return info


def section_build(ctx: Context) -> dict[str, Any]:
    if ctx.dry_run:
        return {"status": "skipped", "why": "dry run: would build the CUDA kernel into "
                f"{ctx.env['DDETR_CACHE_DIR']} and smoke-test it"}  # fmt: skip
    return child_section("build_child", ctx, min(420.0, ctx.left()))


def child_build(dry_run: bool) -> dict[str, Any]:
    from ddetr_cli.ops import build, kernel

    t0 = time.perf_counter()
    ok, reason = kernel.is_available("cuda")
    info = build.build_info().get("cuda", {})
    if not ok:
        raise RuntimeError(f"CUDA kernel unavailable: {reason}")
    return {"available": ok, "reason": reason, "seconds": round(time.perf_counter() - t0, 1),
            "build": info}  # fmt: skip


def section_pytest(ctx: Context) -> dict[str, Any]:
    junit = ctx.tmp / "pytest_gpu.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    if ctx.dry_run:
        cmd += ["--collect-only", "tests/test_kernel_cuda.py"]
    else:
        cmd += [f"--junitxml={junit}", "tests"]
    proc = run_cmd(cmd, min(240.0, ctx.left()), ctx.env)
    result: dict[str, Any] = {"run": proc}
    if junit.is_file():
        import xml.etree.ElementTree as ET

        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"]
        counts["passed"] -= counts["skipped"]
        failed = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ]
        result.update(counts=counts, failed=failed)
    elif ctx.dry_run:
        result["collected"] = proc["stdout_tail"].strip().splitlines()[-1:]
    if proc["rc"] != 0:
        raise SectionError(f"pytest exited with {proc['rc']}", result)
    return result


def section_op(ctx: Context) -> dict[str, Any]:
    out = ctx.tmp / "op.json"
    if ctx.dry_run:  # the same command, tiny and on the CPU
        cmd = ddetr_cmd("bench", "op", "--device", "cpu", "--dtype", "fp32", "-b", "1")
        cmd += ["--part", "decoder", "--attention-backend", "reference", "--repeats", "1"]
    else:
        cmd = ddetr_cmd("bench", "op", "--device", "cuda", "--dtype", "fp32,fp16,bf16")
    proc = run_cmd([*cmd, "--json", str(out)], min(240.0, ctx.left()), ctx.env)
    if not out.is_file():
        raise SectionError(f"ddetr bench op wrote no report (rc {proc['rc']})", {"run": proc})
    return {"run": {k: proc[k] for k in ("cmd", "rc", "seconds")},
            "report": json.loads(out.read_text())}  # fmt: skip


def _fps(ctx: Context, compiled: bool) -> dict[str, Any]:
    if ctx.dry_run and compiled:
        return {"status": "skipped", "why": "dry run: compiling on the CPU takes too long"}
    out = ctx.tmp / ("fps_compile.json" if compiled else "fps.json")
    if ctx.dry_run:  # the same command, tiny and on the CPU
        cmd = ddetr_cmd("bench", "--fps", "--device", "cpu", "--dtype", "fp32", "-b", "1")
        cmd += ["--image-size", "64", "96", "--attention-backend", "reference"]
        cmd += ["--warmup", "0", "--iters", "1"]
    else:
        cmd = ddetr_cmd("bench", "--fps", "--device", "cuda", "--dtype", "fp32,bf16", "-b", "1,4")
        cmd += ["--attention-backend", "kernel", "--warmup", "10", "--iters", "100"]
    if compiled:
        cmd.append("--compile")
    cmd += ["--json", str(out)]
    if ctx.dry_run:
        cmd += ["model.backbone=convnet", "model.enc_layers=1", "model.dec_layers=1"]
    proc = run_cmd(cmd, min(240.0, ctx.left()), ctx.env)
    if not out.is_file():
        raise SectionError(f"ddetr bench --fps wrote no report (rc {proc['rc']})", {"run": proc})
    report = json.loads(out.read_text())
    if compiled:  # the compile run also times eager: keep the compiled rows only
        rows = report.get("speed", {}).get("results", [])
        report["speed"]["results"] = [r for r in rows if r.get("mode") == "compile"]
    return {"run": {k: proc[k] for k in ("cmd", "rc", "seconds")}, "report": report}


def section_fps(ctx: Context) -> dict[str, Any]:
    return _fps(ctx, compiled=False)


def section_fps_compile(ctx: Context) -> dict[str, Any]:
    return _fps(ctx, compiled=True)


def section_train(ctx: Context) -> dict[str, Any]:
    return child_section("train_child", ctx, min(180.0, ctx.left()))


def child_train(dry_run: bool) -> dict[str, Any]:
    """Training steps of recipes/refine.yaml on random pictures and random targets."""
    import torch

    from ddetr_cli.config import load_recipe
    from ddetr_cli.model import build_model
    from ddetr_cli.runtime import amp_autocast
    from ddetr_cli.train import build_criterion
    from ddetr_cli.train.optim import build_optimizer

    device = torch.device("cpu" if dry_run else "cuda")
    height, width = (64, 85) if dry_run else (800, 1066)
    steps = 2 if dry_run else 6
    amps = ["fp32"] if dry_run else ["bf16", "fp16"]
    runs = []
    for amp in amps:
        overrides = [
            "model.pretrained_backbone=false",
            f"train.amp={'off' if amp == 'fp32' else amp}",
        ]
        if dry_run:  # tiny: a small conv backbone, one layer each
            overrides += ["model.backbone=convnet", "model.enc_layers=1", "model.dec_layers=1",
                          "model.num_queries=10", "train.batch_size=1",
                          # the CPU kernel would be built into the fresh cache first: minutes
                          "model.attention_backend=reference"]  # fmt: skip
        recipe = load_recipe(ROOT / "recipes" / "refine.yaml", overrides)
        torch.manual_seed(0)
        model = build_model(recipe).to(device).train()
        criterion = build_criterion(recipe)
        optimizer = build_optimizer(model, recipe["train"])
        scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        batch = recipe["train"]["batch_size"]
        g = torch.Generator().manual_seed(0)
        n_classes = recipe["model"]["num_classes"]
        images = [torch.randn(3, height, width, generator=g).to(device) for _ in range(batch)]
        targets = []
        for _ in range(batch):
            k = 5
            centre = torch.rand(k, 2, generator=g) * 0.6 + 0.2
            size = torch.rand(k, 2, generator=g) * 0.25 + 0.05
            targets.append({"labels": torch.randint(1, n_classes, (k,), generator=g).to(device),
                            "boxes": torch.cat([centre, size], 1).to(device)})  # fmt: skip
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        clip = recipe["train"]["clip_max_norm"]
        params = [p for grp in optimizer.param_groups for p in grp["params"]]
        step_ms, losses = [], []
        for _ in range(steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with amp_autocast(device, "off" if amp == "fp32" else amp):
                outputs = model(images)
            loss_dict = criterion(outputs, targets)
            total = criterion.total(loss_dict)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
            scaler.step(optimizer)
            scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_ms.append(round((time.perf_counter() - t0) * 1000, 1))
            losses.append(float(total.detach()))
        finite = all(math.isfinite(x) for x in losses)
        runs.append({
            "amp": amp,
            "picture": [height, width],
            "batch_size": batch,
            "steps": steps,
            "losses": [round(x, 4) for x in losses],
            "finite": finite,
            "step_ms": step_ms,
            "step_ms_median_after_first": sorted(step_ms[1:])[len(step_ms[1:]) // 2]
            if len(step_ms) > 1 else step_ms[0],
            "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if device.type == "cuda" else None,
            "attention_backend": recipe["model"]["attention_backend"],
            "scaler": scaler.is_enabled(),
        })  # fmt: skip
        del model, optimizer, images
    bad = [r["amp"] for r in runs if not r["finite"]]
    result = {"runs": runs}
    if bad:
        raise SectionError(f"non-finite losses under {', '.join(bad)}", result)
    return result


def section_transformers(ctx: Context) -> dict[str, Any]:
    if importlib.util.find_spec("transformers") is None:
        return {"status": "skipped", "why": "transformers is not installed"}
    if ctx.dry_run:
        return {"status": "skipped", "why": "dry run: would run compare_transformers_gpu.py"}
    out_dir = ctx.tmp / "transformers"
    cmd = [sys.executable, str(HERE / "compare_transformers_gpu.py"), "--out-dir", str(out_dir)]
    cmd += ["--no-compile", "--warmup", "5", "--iters", "50"]
    proc = run_cmd(cmd, min(180.0, ctx.left()), ctx.env)
    files = sorted(out_dir.glob("bench_gpu_*.json")) if out_dir.is_dir() else []
    if not files:
        raise SectionError(f"compare_transformers_gpu.py wrote no report (rc {proc['rc']})",
                           {"run": proc})  # fmt: skip
    return {"run": {k: proc[k] for k in ("cmd", "rc", "seconds")},
            "report": json.loads(files[0].read_text())}  # fmt: skip


class SectionError(RuntimeError):
    """A section failed but has partial results to keep."""

    def __init__(self, message: str, partial: dict[str, Any]) -> None:
        super().__init__(message)
        self.partial = partial


# name, function, least seconds it needs to be worth starting (on a GPU)
SECTIONS: list[tuple[str, Callable[[Context], dict[str, Any]], float]] = [
    ("versions", section_versions, 0),
    ("build", section_build, 60),
    ("pytest", section_pytest, 30),
    ("op", section_op, 30),
    ("fps", section_fps, 40),
    ("train", section_train, 40),
    ("fps_compile", section_fps_compile, 90),
    ("transformers", section_transformers, 60),
]
CHILD_SECTIONS = {"build_child": child_build, "train_child": child_train}


# --------------------------------------------------------------------------- goals


def _verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "UNKNOWN"}[ok]


def evaluate_goals(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """PASS/FAIL/UNKNOWN per goal from the op and FPS sections (UNKNOWN: no data)."""
    goals: dict[str, dict[str, Any]] = {}
    sections = report.get("sections", {})
    op_rows = (sections.get("op", {}).get("report") or {}).get("results", [])

    def row(part: str, batch: int, dtype: str, pas: str, backend: str) -> dict | None:
        for r in op_rows:
            if (r.get("part"), r.get("batch"), r.get("dtype"), r.get("pass"), r.get("backend")) == (
                part, batch, dtype, pas, backend,
            ):  # fmt: skip
                return r
        return None

    enc = [r for r in op_rows if r.get("part") == "encoder" and r.get("pass") == "fwd"]
    batches = sorted({r["batch"] for r in enc if r.get("dtype") == "fp32"})
    speed, floor = [], []
    for b in batches:
        k, ref = (
            row("encoder", b, "fp32", "fwd", "kernel"),
            row("encoder", b, "fp32", "fwd", "reference"),
        )
        if k and ref and k.get("ms") and ref.get("ms"):
            speed.append((b, round(ref["ms"] / k["ms"], 2)))
        if k and k.get("ms") and k.get("floor_ms"):
            floor.append((b, round(k["ms"] / k["floor_ms"], 2)))
    goals["op_fp32_speedup"] = {
        "value": {f"batch {b}": f"{s}x" for b, s in speed},
        "ok": all(s >= 10 for _, s in speed) if speed else None,
    }
    goals["op_fp32_floor"] = {
        "value": {f"batch {b}": f"{f}x floor" for b, f in floor},
        "ok": all(f <= 3 for _, f in floor) if floor else None,
    }
    ok = None
    value: Any = None
    if batches:
        b = batches[-1]
        k32, k16 = (
            row("encoder", b, "fp32", "fwd", "kernel"),
            row("encoder", b, "bf16", "fwd", "kernel"),
        )
        if k32 and k16 and k32.get("ms") and k16.get("ms"):
            ok = k16["ms"] < k32["ms"]
            value = f"batch {b}: bf16 {k16['ms']} ms vs fp32 {k32['ms']} ms"
    goals["op_bf16_faster"] = {"value": value, "ok": ok}

    fps_rows = []
    for name in ("fps", "fps_compile"):
        fps_rows += ((sections.get(name, {}).get("report") or {}).get("speed") or {}).get(
            "results", []
        )

    def fps(dtype: str, batch: int, mode: str | None) -> float | None:
        vals = [
            r["fps"]
            for r in fps_rows
            if r.get("dtype") == dtype and r.get("batch_size") == batch and r.get("fps")
            and r.get("backend") != "reference" and (mode is None or r.get("mode") == mode)
        ]  # fmt: skip
        return max(vals) if vals else None

    f32, f16 = fps("fp32", 4, "eager"), fps("bf16", 4, "eager")
    goals["e2e_bf16_faster"] = {
        "value": None if f32 is None or f16 is None else f"bf16 {f16} FPS vs fp32 {f32} FPS",
        "ok": None if f32 is None or f16 is None else f16 > f32,
    }
    best = fps("fp32", 4, None)
    goals["e2e_fp32_b4"] = {
        "value": None if best is None else f"{best} FPS (needs > {OFFICIAL_V100_FPS_B4})",
        "ok": None if best is None else best > OFFICIAL_V100_FPS_B4,
    }
    for key, g in goals.items():
        g["goal"] = GOALS[key]
        g["verdict"] = _verdict(g["ok"])
    return goals


# --------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    versions = report["sections"].get("versions", {})
    gpu = versions.get("gpu", "no GPU")
    lines = [
        f"# GPU check on {gpu}" + (" (dry run on the CPU)" if report["dry_run"] else ""),
        "",
        f"Started {report['started_utc']} UTC; {report.get('elapsed_s', '?')} s of a "
        f"{report['budget_s']} s budget. Command: `{report['script']}`.",
        "",
        "| driver | torch | CUDA | capability | nvcc |",
        "|---|---|---|---|---|",
        f"| {versions.get('driver')} | {versions.get('torch')} | {versions.get('torch_cuda')} "
        f"| {versions.get('capability')} | {versions.get('nvcc')} |",
        "",
    ]
    build = report["sections"].get("build", {})
    if build.get("build"):
        b = build["build"]
        lines += [f"Kernel: built for {b.get('arch_list')} in {b.get('build_seconds')} s into a "
                  f"fresh cache ({b.get('cache_dir')}); {build.get('reason')}.", ""]  # fmt: skip
    lines += ["## Goals", ""]
    if report["dry_run"]:
        lines += [
            "Dry run: evaluated on the CPU benchmark files, so the verdicts mean nothing.",
            "",
        ]
    for g in report["goals"].values():
        lines.append(f"- **{g['verdict']}** {g['goal']}: {g['value']}")
    lines += ["", "## Sections", "", "| section | status | seconds | note |", "|---|---|---:|---|"]
    for name, s in report["sections"].items():
        note = (s.get("error") or s.get("why") or "").replace("\n", " ").replace("|", "/")[:200]
        lines.append(f"| {name} | {s.get('status')} | {s.get('seconds', '')} | {note} |")
    pyt = report["sections"].get("pytest", {})
    if "counts" in pyt:
        c = pyt["counts"]
        lines += ["", f"pytest -m gpu: {c['passed']} passed, {c['failures']} failed, "
                  f"{c['errors']} errors, {c['skipped']} skipped."]  # fmt: skip
        lines += [f"- failed: `{f}`" for f in pyt.get("failed", [])]
    op_rows = (report["sections"].get("op", {}).get("report") or {}).get("results", [])
    if op_rows:
        lines += ["", "## Op (800x1333 picture)", "",
                  "| part | batch | dtype | pass | backend | ms | floor ms | x floor | speed-up |",
                  "|---|---:|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in op_rows:
            x = r["ms"] / r["floor_ms"] if r.get("ms") and r.get("floor_ms") else None
            lines.append(
                f"| {r.get('part')} | {r.get('batch')} | {r.get('dtype')} | {r.get('pass')} "
                f"| {r.get('backend')} | {r.get('ms')} | {r.get('floor_ms')} "
                f"| {'-' if x is None else f'{x:.2f}'} | {r.get('speedup')} |"
            )
    for name in ("fps", "fps_compile"):
        rows = ((report["sections"].get(name, {}).get("report") or {}).get("speed") or {}).get(
            "results", []
        )
        if rows:
            lines += ["", f"## End-to-end ({name})", "",
                      "| backend | dtype | mode | batch | FPS | p50 ms | peak MiB | error |",
                      "|---|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
            for r in rows:
                lines.append(
                    f"| {r.get('backend')} | {r.get('dtype')} | {r.get('mode')} "
                    f"| {r.get('batch_size')} | {r.get('fps')} | {r.get('latency_ms_p50')} "
                    f"| {r.get('peak_memory_mib')} | {r.get('error') or ''} |"
                )
    runs = report["sections"].get("train", {}).get("runs", [])
    if runs:
        lines += ["", "## Training steps (recipes/refine.yaml)", "",
                  "| amp | picture | batch | finite | losses | step ms (median) | peak MiB |",
                  "|---|---|---:|---|---|---:|---:|"]  # fmt: skip
        for r in runs:
            lines.append(
                f"| {r['amp']} | {r['picture'][0]}x{r['picture'][1]} | {r['batch_size']} "
                f"| {r['finite']} | {', '.join(map(str, r['losses']))} "
                f"| {r['step_ms_median_after_first']} | {r['peak_memory_mib']} |"
            )
    tr = (report["sections"].get("transformers", {}).get("report") or {}).get("results", [])
    if tr:
        lines += ["", "## ddetr vs transformers (eager)", "", "| model | dtype | batch | FPS |",
                  "|---|---|---:|---:|"]  # fmt: skip
        for r in tr:
            lines.append(f"| {r.get('model')} | {r.get('dtype')} | {r.get('batch_size')} "
                         f"| {r.get('fps')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(ctx: Context) -> tuple[Path, Path]:
    ctx.report["elapsed_s"] = round(time.perf_counter() - ctx.t0, 1)
    ctx.report["goals"] = evaluate_goals(ctx.report)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    js = ctx.out_dir / f"gpu_{ctx.device_slug}.json"
    md = ctx.out_dir / f"gpu_{ctx.device_slug}.md"
    js.write_text(json.dumps(ctx.report, indent=1, default=str) + "\n")
    md.write_text(markdown(ctx.report))
    return js, md


def run_all(ctx: Context, only: set[str] | None) -> int:
    for name, fn, need in SECTIONS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        if not ctx.dry_run and ctx.left() < need:
            entry = {"status": "skipped", "why": f"out of budget ({ctx.left():.0f} s left)"}
        else:
            print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
            try:
                entry = fn(ctx)
                entry.setdefault("status", "ok")
            except SectionError as e:
                # A child stopped at the time budget is "timeout", not a failure of the code.
                timed_out = (e.partial.get("run") or {}).get("rc") == "timeout"
                status = "timeout" if timed_out else "failed"
                entry = {**e.partial, "status": status, "error": str(e)}
            except Exception as e:  # recorded; the next section still runs
                entry = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        ctx.report["sections"][name] = entry
        print(f"[gpu_check] {name}: {entry['status']} ({entry['seconds']} s)", file=sys.stderr)
        write_report(ctx)
    js, md = write_report(ctx)
    for g in ctx.report["goals"].values():
        print(f"{g['verdict']}: {g['goal']} -- {g['value']}")
    print(f"report: {js} and {md}")
    timeouts = [n for n, s in ctx.report["sections"].items() if s["status"] == "timeout"]
    if timeouts:
        print(f"stopped at the time budget: {', '.join(timeouts)} (raise --budget-s)")
    failed = [n for n, s in ctx.report["sections"].items() if s["status"] == "failed"]
    if failed:
        print(f"failed sections: {', '.join(failed)}")
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="check the script on a CPU machine")
    where = "for gpu_<device>.json/.md (default benchmarks/; dry run: a temp dir)"
    p.add_argument("--out-dir", type=Path, default=None, help=where)
    p.add_argument("--budget-s", type=float, default=450.0, help="overall time budget, seconds")
    p.add_argument("--only", default="", help="comma-separated sections to run (default all)")
    p.add_argument("--section", help=argparse.SUPPRESS)  # internal: one child section
    p.add_argument("--section-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out_dir is None:
        args.out_dir = Path(tempfile.mkdtemp(prefix="gpu_check_dry_")) if args.dry_run else HERE
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.section:
        try:
            result = CHILD_SECTIONS[args.section](args.dry_run)
            result.setdefault("status", "ok")
        except SectionError as e:
            result = {**e.partial, "status": "failed", "error": str(e)}
        except Exception as e:
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        args.section_out.write_text(json.dumps(result, default=str))
        return 0 if result["status"] == "ok" else 1
    ctx = Context(args)
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    try:
        return run_all(ctx, only)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
