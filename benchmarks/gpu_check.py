"""The first minutes on a GPU, in one call: benchmarks/gpu_check.sh [--out DIR] (GPU_CHECK.md).

Steps, in this order, each in a child process with its own cap in seconds (the main ones add up to
350; the run stops after preflight if that fails, otherwise a step that fails or is cut is recorded
and the next one runs):

  preflight   20  nvidia-smi, torch and its CUDA, nvcc's major against torch's CUDA major, ninja,
                  a C++ compiler, the GPU's architecture
  build       90  the CUDA kernel for that architecture only (TORCH_CUDA_ARCH_LIST), into
                  build/gpu_check_kernels, which is kept: a re-run loads it, and its smoke test
  cuda_tests  90  the carried wheels (.gpu_wheels, pip install --target), then pytest on the named
                  CUDA test files
  accuracy    30  kernel against the float64 reference at the 800x1333 encoder and decoder shapes,
                  batch 2, fp32 and bf16, forward and backward: the largest errors
  op_speed    40  the op alone (encoder, fp32/bf16, batch 1/8) against the reference backend and
                  the memory floor (ddetr bench op)
  fps         50  end-to-end FPS, plain R50, batch 1/4, fp32/bf16, eager (ddetr bench --fps)
  train       30  3 bf16 training steps of recipes/refine.yaml at 800x1066

and then, only while the run's budget (--budget-s, default 360 s) leaves them time:

  compile         torch.compile: the op's compile test and a compiled FPS row (bf16, batch 4)
  transformers    benchmarks/compare_transformers_gpu.py, eager

One line per step is printed as it finishes, and the report, DIR/gpu_<device>.json and .md, is
rewritten (atomically) when each step starts and ends, with every child's output in
DIR/gpu_check.log: a run cut off by its caller still leaves every finished step, and the step it
was in marked "running". --dry-run runs every step in a tiny CPU form (CI: tests/test_gpu_check.py);
--simulate STEP=fail|cut|hang stands a failing, cut or hanging child in for a step (dry run only).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WHEELS = ROOT / ".gpu_wheels"  # benchmarks/gpu_wheels.sh fills it; `run` carries it
KERNEL_CACHE = ROOT / "build" / "gpu_check_kernels"  # kept between runs on one machine
OFFICIAL_V100_FPS_B4 = 19.4  # plain R50, fp32, batch 4 (official README)
CUDA_TESTS = [
    "tests/test_kernel_cuda.py",
    "tests/test_bench.py::test_measure_speed_on_cuda_reports_peak_memory",
]
# Largest error over the reference's largest magnitude, per output (the CPU kernel gives about
# 1e-5 in fp32). bf16: the result and value's gradient are rounded once to bf16 (2^-8, about 4e-3
# seen); the locations' and weights' gradients stay float32 (float32 locations and weights).
ACCURACY_TOLERANCE = {
    "fp32": {"out": 1e-4, "grad_value": 1e-4, "grad_loc": 1e-4, "grad_attn": 1e-4},
    "bf16": {"out": 1e-2, "grad_value": 1e-2, "grad_loc": 1e-4, "grad_attn": 1e-4},
}
GOALS = {
    "op_accurate": "kernel within tolerance of the float64 reference at the real shapes",
    "op_fp32_speedup": "fp32 op forward >= 10x the reference backend (encoder, every batch)",
    "op_fp32_floor": "fp32 op forward within 3x of the memory floor (encoder, every batch)",
    "op_bf16_faster": "bf16 op forward faster than fp32 (encoder, largest batch)",
    "e2e_bf16_faster": "bf16 end-to-end faster than fp32 (plain R50, batch 4, eager)",
    "e2e_fp32_b4": f"plain R50 fp32 batch 4 faster than {OFFICIAL_V100_FPS_B4} FPS (best mode)",
}


class StepFailed(Exception):
    """A step failed; ``partial`` keeps what it found."""

    def __init__(self, message: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial or {}


class StepCut(StepFailed):
    """A step's child ran past its cap and was killed."""


class Stopped(BaseException):
    """The check itself was told to stop (SIGTERM, SIGINT)."""


# --------------------------------------------------------------------------- running children


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.dry_run: bool = args.dry_run
        self.budget_s: float = args.budget_s
        self.simulate: dict[str, str] = args.simulate
        self.out_dir: Path = args.out
        self.t0 = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="ddetr_gpu_check_"))
        self.log_path = self.out_dir / "gpu_check.log"
        self.step = ""  # the step running now, and its cap in seconds
        self.cap = 0.0
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The interpreter's folder first: its environment's ninja and pytest scripts live there.
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), self.env["PATH"]])
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        self.env["DDETR_CACHE_DIR"] = str(self.tmp / "kernels" if self.dry_run else KERNEL_CACHE)
        self.device_slug = "cpu_dry_run" if self.dry_run else gpu_slug()
        self.report: dict[str, Any] = {
            "command": "benchmarks/gpu_check.sh" + (" --dry-run" if self.dry_run else ""),
            "started_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "dry_run": self.dry_run,
            "budget_s": self.budget_s,
            "steps": {},
            "goals": {},
        }

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def child(self, cmd: list[str], cap_s: float) -> dict[str, Any]:
        """Runs cmd in its own process group with its output appended to the log; kills the group
        at ``cap_s``. Returns rc ("cut" when killed), seconds, the output and its tail."""
        cmd = self._simulated(cmd)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n===== {self.step}: {' '.join(cmd)}\n")
            log.flush()
            start = log.tell()
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, preexec_fn=os.setpgrp)  # fmt: skip
            try:
                rc: int | str = proc.wait(timeout=max(1.0, cap_s))
            except subprocess.TimeoutExpired:
                rc = "cut"
            finally:  # also on Stopped: never leave a child behind
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            log.seek(start)
            output = log.read()
        return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.monotonic() - t0, 1),
                "tail": output[-3000:], "output": output}  # fmt: skip

    def _simulated(self, cmd: list[str]) -> list[str]:
        what = self.simulate.get(self.step)
        if what is None:
            return cmd
        code = {
            "fail": "import sys; sys.exit('simulated failure')",
            "cut": "import time; time.sleep(600)",
            "hang": "import time; time.sleep(600)",
        }[what]
        # The report folder in the command line lets a test find a child its check left behind.
        return [sys.executable, "-c", f"{code}  # {what} of {self.step} for {self.out_dir}"]

    def checked(self, cmd: list[str], cap_s: float, what: str) -> dict[str, Any]:
        """child(), raising StepCut / StepFailed unless it exits 0."""
        run = self.child(cmd, cap_s)
        if run["rc"] == "cut":
            raise StepCut(f"{what} was cut at its cap of {cap_s:.0f} s", {"run": brief(run)})
        if run["rc"] != 0:
            raise StepFailed(f"{what} exited with {run['rc']}", {"run": brief(run)})
        return run

    def in_child(self, name: str) -> dict[str, Any]:
        """Runs CHILDREN[name] of this script in a child process; returns what it wrote."""
        out = self.tmp / f"{name}.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", name,
               "--child-out", str(out), *(["--dry-run"] if self.dry_run else [])]  # fmt: skip
        run = self.child(cmd, self.cap)
        if not out.is_file():
            partial = {"run": brief(run)}
            if run["rc"] == "cut":
                raise StepCut(f"{name} was cut at its cap of {self.cap:.0f} s", partial)
            raise StepFailed(f"{name} wrote no result (exit {run['rc']})", partial)
        result = json.loads(out.read_text())
        timing = {k: run[k] for k in ("rc", "seconds")}
        if result.get("status") == "failed":
            raise StepFailed(result.pop("error"), {**result, "run": timing})
        return {**result, "run": timing}


def brief(run: dict[str, Any]) -> dict[str, Any]:
    """A child's run as the report keeps it: the output's tail, not all of it (that is in the
    log)."""
    return {k: v for k, v in run.items() if k != "output"}


def gpu_slug() -> str:
    """gpu_<slug> names the report: the first GPU's name as nvidia-smi gives it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        out = ""
    name = out.strip().splitlines()[0] if out.strip() else "unknown gpu"
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


# --------------------------------------------------------------------------- steps (parent side)


def step_preflight(ctx: Context) -> dict[str, Any]:
    result = ctx.in_child("preflight")
    if result.get("capability"):  # build for this GPU only, whatever the caller's setting
        ctx.env["TORCH_CUDA_ARCH_LIST"] = result["capability"]
    return result


def step_build(ctx: Context) -> dict[str, Any]:
    return ctx.in_child("build")


def install_wheels(ctx: Context) -> dict[str, Any]:
    """The carried wheels into a --target folder put first on every later child's PYTHONPATH."""
    wheels = sorted(str(p) for p in WHEELS.glob("*.whl"))
    if not wheels:
        return {"installed": [], "note": f"no wheels in {WHEELS.name}/ (benchmarks/gpu_wheels.sh)"}
    site = ctx.tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(site), *wheels]  # fmt: skip
    run = ctx.child(cmd, 30)
    if run["rc"] != 0:
        return {"installed": [], "note": f"pip install --target failed ({run['rc']})"}
    ctx.env["PYTHONPATH"] = os.pathsep.join([str(site), ctx.env["PYTHONPATH"]])
    return {"installed": [Path(w).name for w in wheels]}


def step_cuda_tests(ctx: Context) -> dict[str, Any]:
    t0 = time.monotonic()
    wheels = install_wheels(ctx)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *CUDA_TESTS]
    # The compile test compiles cold (tens of seconds): it runs in the optional compile step.
    cmd += ["--collect-only", "-q"] if ctx.dry_run else ["-v", "-rfE", "--tb=short", "-k",
                                                         "not compile"]  # fmt: skip
    run = ctx.child(cmd, ctx.cap - (time.monotonic() - t0))
    outcomes = re.findall(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)", run["output"], re.M)
    counts = {k.lower(): sum(1 for _, o in outcomes if o == k) for k in
              ("PASSED", "FAILED", "ERROR", "SKIPPED")}  # fmt: skip
    result = {"wheels": wheels, "counts": counts, "run": brief(run),
              "failed": [t for t, o in outcomes if o in ("FAILED", "ERROR")]}  # fmt: skip
    if ctx.dry_run:
        counts["collected"] = len(re.findall(r"^tests/\S+::\S+$", run["output"], re.M))
    if run["rc"] == "cut":
        raise StepCut(f"pytest was cut at its cap of {ctx.cap:.0f} s", result)
    if run["rc"] != 0:
        raise StepFailed(f"pytest exited with {run['rc']}", result)
    result["summary"] = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    return result


def step_accuracy(ctx: Context) -> dict[str, Any]:
    return ctx.in_child("accuracy")


def _bench_json(ctx: Context, args: list[str], cap_s: float, name: str) -> dict[str, Any]:
    out = ctx.tmp / f"{name}.json"
    cmd = [sys.executable, "-m", "ddetr_cli", "bench", *args, "--json", str(out)]
    run = ctx.checked(cmd, cap_s, f"ddetr bench ({name})")
    return {"run": {k: run[k] for k in ("cmd", "rc", "seconds")},
            "report": json.loads(out.read_text())}  # fmt: skip


def step_op_speed(ctx: Context) -> dict[str, Any]:
    if ctx.dry_run:  # the same command, tiny and on the CPU
        args = ["op", "--device", "cpu", "--dtype", "fp32", "-b", "1", "--part", "decoder",
                "--attention-backend", "reference", "--repeats", "1"]  # fmt: skip
    else:
        args = ["op", "--device", "cuda", "--dtype", "fp32,bf16", "-b", "1,8", "--part", "encoder"]
    return _bench_json(ctx, args, ctx.cap, "op_speed")


def _fps_args(ctx: Context, dtypes: str, batches: str) -> list[str]:
    if ctx.dry_run:  # the same command, tiny and on the CPU
        return ["--fps", "--device", "cpu", "--dtype", "fp32", "-b", "1", "--image-size", "64",
                "96", "--attention-backend", "reference", "--warmup", "1", "--iters", "1",
                "model.backbone=convnet", "model.enc_layers=1", "model.dec_layers=1"]  # fmt: skip
    return ["--fps", "--device", "cuda", "--dtype", dtypes, "-b", batches,
            "--attention-backend", "kernel", "--warmup", "10", "--iters", "50"]  # fmt: skip


def step_fps(ctx: Context) -> dict[str, Any]:
    return _bench_json(ctx, _fps_args(ctx, "fp32,bf16", "1,4"), ctx.cap, "fps")


def step_train(ctx: Context) -> dict[str, Any]:
    return ctx.in_child("train")


def step_compile(ctx: Context) -> dict[str, Any]:
    if ctx.dry_run:
        return {"status": "skipped", "why": "dry run: compiling on the CPU takes minutes"}
    t0 = time.monotonic()
    test = ctx.child([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                      "compile", CUDA_TESTS[0]], ctx.cap)  # fmt: skip
    result = _bench_json(ctx, [*_fps_args(ctx, "bf16", "4"), "--compile"],
                         ctx.cap - (time.monotonic() - t0), "fps_compile")  # fmt: skip
    result["test"] = brief(test)
    rows = result["report"].get("speed", {}).get("results", [])
    result["report"]["speed"]["results"] = [r for r in rows if r.get("mode") == "compile"]
    if test["rc"] != 0:
        raise StepFailed(f"the compile test exited with {test['rc']}", result)
    return result


def step_transformers(ctx: Context) -> dict[str, Any]:
    if ctx.dry_run:
        return {"status": "skipped", "why": "dry run: would run compare_transformers_gpu.py"}
    out_dir = ctx.tmp / "transformers"
    cmd = [sys.executable, str(HERE / "compare_transformers_gpu.py"), "--out-dir", str(out_dir),
           "--no-compile", "--warmup", "5", "--iters", "50"]  # fmt: skip
    run = ctx.checked(cmd, ctx.cap, "compare_transformers_gpu.py")
    files = sorted(out_dir.glob("bench_gpu_*.json"))
    if not files:
        raise StepFailed("compare_transformers_gpu.py wrote no report", {"run": run})
    return {"run": {k: run[k] for k in ("cmd", "rc", "seconds")},
            "report": json.loads(files[0].read_text())}  # fmt: skip


@dataclass(frozen=True)
class Step:
    name: str
    cap_s: float  # the most it runs; an optional step runs up to what is left of the budget
    run: Callable[[Context], dict[str, Any]]
    least_s: float = 0.0  # an optional step: what must be left of the budget to start it

    @property
    def optional(self) -> bool:
        return self.least_s > 0


STEPS = [
    Step("preflight", 20, step_preflight),
    Step("build", 90, step_build),
    Step("cuda_tests", 90, step_cuda_tests),
    Step("accuracy", 30, step_accuracy),
    Step("op_speed", 40, step_op_speed),
    Step("fps", 50, step_fps),
    Step("train", 30, step_train),
    Step("compile", 120, step_compile, least_s=60),
    Step("transformers", 120, step_transformers, least_s=45),
]
SIMULATED_CUT_CAP_S = 3  # --simulate STEP=cut: the step's cap in a dry run
DRY_RUN_CAP_FACTOR = 4  # a dry run checks the logic on a shared CPU, not the timing


# --------------------------------------------------------------------------- steps (child side)


def _run_text(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def child_preflight(dry_run: bool) -> dict[str, Any]:
    """What the machine has; fails (in a GPU run) on the first thing the check cannot do without."""
    import platform

    info: dict[str, Any] = {"python": platform.python_version()}
    smi = _run_text(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    info["nvidia_smi"] = smi.splitlines()[0] if smi else None
    nvcc = _run_text(["nvcc", "--version"])
    found = re.search(r"release (\d+)\.(\d+)", nvcc or "")
    info["nvcc"] = f"{found[1]}.{found[2]}" if found else None
    info["ninja"] = _run_text(["ninja", "--version"])
    info["cxx"] = shutil.which(os.environ.get("CXX", "c++"))
    import torch

    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                cuda_available=torch.cuda.is_available())  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        major, minor = torch.cuda.get_device_capability(0)
        info.update(gpu=props.name, capability=f"{major}.{minor}",
                    memory_gib=round(props.total_memory / 2**30, 1),
                    sm_count=props.multi_processor_count)  # fmt: skip
    problems = preflight_problems(info)
    info["problems"] = problems
    info["summary"] = f"{info.get('gpu', 'no GPU')}, torch {info['torch']}, nvcc {info['nvcc']}"
    if problems and not dry_run:
        raise StepFailed("; ".join(problems), info)
    return info


def preflight_problems(info: dict[str, Any]) -> list[str]:
    """Each missing piece the GPU steps need, as one phrase."""
    problems = []
    if not info.get("nvidia_smi"):
        problems.append("nvidia-smi found no GPU")
    if not info.get("cuda_available"):
        problems.append(f"torch {info.get('torch')} sees no CUDA GPU")
    torch_major = str(info.get("torch_cuda") or "").split(".")[0]
    if not info.get("nvcc"):
        problems.append("nvcc not found")
    elif info["nvcc"].split(".")[0] != torch_major:
        problems.append(f"nvcc {info['nvcc']} but torch's CUDA is {info.get('torch_cuda')}")
    if not info.get("ninja"):
        problems.append("ninja not found")
    if not info.get("cxx"):
        problems.append("no C++ compiler")
    return problems


def child_build(dry_run: bool) -> dict[str, Any]:
    if dry_run:
        return {"status": "skipped", "why": "dry run: would build the CUDA kernel for this GPU"}
    from ddetr_cli.ops import build, kernel

    ok, reason = kernel.is_available("cuda")
    info = build.build_info().get("cuda", {})
    if not ok:
        raise StepFailed(f"CUDA kernel unavailable: {reason}", {"build": info})
    how = "built" if info.get("built_now") else "loaded from the cache"
    summary = f"{how} for {info.get('arch_list')} (build took {info.get('build_seconds')} s)"
    return {"reason": reason, "build": info, "summary": summary}


def child_accuracy(dry_run: bool) -> dict[str, Any]:
    import torch

    from ddetr_cli.bench.op import op_errors

    device = torch.device("cpu" if dry_run else "cuda")
    parts, batch, backend = (["decoder"], 1, "reference") if dry_run else (
        ["encoder", "decoder"], 2, "kernel")  # fmt: skip
    rows, bad = [], []
    for part in parts:
        for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            errors = op_errors(part, batch, dtype, device, backend)
            for key, limit in ACCURACY_TOLERANCE[dtype_name].items():
                if not errors[key]["rel"] <= limit:  # NaN fails too
                    bad.append(f"{part} {dtype_name} {key} {errors[key]['rel']:.2g} > {limit}")
            rows.append({"part": part, "batch": batch, "dtype": dtype_name, "errors": errors})
    result = {"backend": backend, "rows": rows, "tolerance": ACCURACY_TOLERANCE}
    if bad:
        raise StepFailed("beyond tolerance: " + "; ".join(bad), result)
    worst = max(e["rel"] for r in rows for e in r["errors"].values())
    result["summary"] = f"{len(rows)} settings within tolerance (worst relative error {worst:.2g})"
    return result


def child_train(dry_run: bool) -> dict[str, Any]:
    """3 training steps of recipes/refine.yaml under bf16 on random pictures and targets."""
    import torch

    from ddetr_cli.model import build_model
    from ddetr_cli.recipe import load_recipe
    from ddetr_cli.runtime import amp_autocast
    from ddetr_cli.train import build_criterion
    from ddetr_cli.train.optim import build_optimizer

    device = torch.device("cpu" if dry_run else "cuda")
    height, width = (64, 85) if dry_run else (800, 1066)
    overrides = ["model.pretrained_backbone=false", "train.amp=bf16"]
    if dry_run:  # tiny: a small conv backbone, one layer each, the reference op
        overrides += ["model.backbone=convnet", "model.enc_layers=1", "model.dec_layers=1",
                      "model.num_queries=10", "train.batch_size=1",
                      "model.attention_backend=reference"]  # fmt: skip
    recipe = load_recipe(ROOT / "recipes" / "refine.yaml", overrides)
    torch.manual_seed(0)
    model = build_model(recipe).to(device).train()
    criterion = build_criterion(recipe)
    optimizer = build_optimizer(model, recipe["train"])
    batch = recipe["train"]["batch_size"]
    images = [torch.rand(3, height, width, device=device) for _ in range(batch)]
    targets = [{"labels": torch.tensor([1, 2], device=device),
                "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]],
                                      device=device)} for _ in range(batch)]  # fmt: skip
    step_ms, losses = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        with amp_autocast(device, "bf16"):
            outputs = model(images)
        total = criterion.total(criterion(outputs, targets))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        losses.append(float(total))  # synchronises
        step_ms.append(round((time.perf_counter() - t0) * 1000, 1))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    result = {"picture": [height, width], "batch_size": batch, "losses": losses,
              "step_ms": step_ms, "peak_memory_mib": peak,
              "attention_backend": recipe["model"]["attention_backend"]}  # fmt: skip
    if not all(math.isfinite(x) for x in losses):
        raise StepFailed("non-finite losses under bf16", result)
    result["summary"] = f"losses {', '.join(f'{x:.3f}' for x in losses)}; steps {step_ms} ms"
    return result


CHILDREN: dict[str, Callable[[bool], dict[str, Any]]] = {
    "preflight": child_preflight,
    "build": child_build,
    "accuracy": child_accuracy,
    "train": child_train,
}


def run_child(name: str, out: Path, dry_run: bool) -> int:
    try:
        result = CHILDREN[name](dry_run)
    except StepFailed as e:
        result = {**e.partial, "status": "failed", "error": str(e)}
    except Exception as e:
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
    out.write_text(json.dumps(result, default=str))
    return 1 if result.get("status") == "failed" else 0


# --------------------------------------------------------------------------- goals and report


def _op_ms(rows: list[dict], batch: int, dtype: str, backend: str) -> tuple[float, float] | None:
    for r in rows:
        key = (r.get("part"), r.get("batch"), r.get("dtype"), r.get("pass"), r.get("backend"))
        if key == ("encoder", batch, dtype, "fwd", backend) and r.get("ms"):
            return r["ms"], r.get("floor_ms") or 0.0
    return None


def _fps_rows(steps: dict[str, Any]) -> list[dict]:
    rows = []
    for name in ("fps", "compile"):
        report = steps.get(name, {}).get("report") or {}
        rows += (report.get("speed") or {}).get("results", [])
    return rows


def evaluate_goals(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """PASS / FAIL / UNKNOWN (no data) per goal, from the steps' results."""
    steps = report.get("steps", {})
    acc = steps.get("accuracy", {})
    goals: dict[str, dict[str, Any]] = {"op_accurate": {
        "value": acc.get("summary") or acc.get("error"),
        "ok": {"ok": True, "failed": False}.get(acc.get("status")) if acc.get("rows") else None,
    }}  # fmt: skip
    rows = (steps.get("op_speed", {}).get("report") or {}).get("results", [])
    batches = sorted({r["batch"] for r in rows if r.get("part") == "encoder"})
    speed, floor = {}, {}
    for b in batches:
        kernel, ref = _op_ms(rows, b, "fp32", "kernel"), _op_ms(rows, b, "fp32", "reference")
        if kernel and ref:
            speed[b] = round(ref[0] / kernel[0], 2)
        if kernel and kernel[1]:
            floor[b] = round(kernel[0] / kernel[1], 2)
    goals["op_fp32_speedup"] = {
        "value": {f"batch {b}": f"{s}x" for b, s in speed.items()},
        "ok": all(s >= 10 for s in speed.values()) if speed else None,
    }
    goals["op_fp32_floor"] = {
        "value": {f"batch {b}": f"{f}x floor" for b, f in floor.items()},
        "ok": all(f <= 3 for f in floor.values()) if floor else None,
    }
    k32, k16 = (_op_ms(rows, batches[-1], d, "kernel") if batches else None
                for d in ("fp32", "bf16"))  # fmt: skip
    goals["op_bf16_faster"] = {
        "value": f"batch {batches[-1]}: bf16 {k16[0]} ms vs fp32 {k32[0]} ms" if k32 and k16
        else None, "ok": k16[0] < k32[0] if k32 and k16 else None}  # fmt: skip
    fps_rows = _fps_rows(steps)

    def best(dtype: str, mode: str | None) -> float | None:
        vals = [r["fps"] for r in fps_rows if r.get("dtype") == dtype and r.get("batch_size") == 4
                and r.get("fps") and (mode is None or r.get("mode") == mode)]  # fmt: skip
        return max(vals) if vals else None

    f32, f16, top = best("fp32", "eager"), best("bf16", "eager"), best("fp32", None)
    both = f32 is not None and f16 is not None
    goals["e2e_bf16_faster"] = {"value": f"bf16 {f16} FPS vs fp32 {f32} FPS" if both else None,
                                "ok": f16 > f32 if both else None}  # fmt: skip
    goals["e2e_fp32_b4"] = {
        "value": None if top is None else f"{top} FPS",
        "ok": None if top is None else top > OFFICIAL_V100_FPS_B4,
    }
    for key, g in goals.items():
        g["goal"] = GOALS[key]
        g["verdict"] = {True: "PASS", False: "FAIL", None: "UNKNOWN"}[g["ok"]]
    return goals


def _cell(value: Any) -> str:
    return str(value).replace("\n", " ").replace("|", "/")[:160]


def markdown(report: dict[str, Any]) -> str:
    steps = report["steps"]
    pre = steps.get("preflight", {})
    lines = [f"# GPU check on {pre.get('gpu', 'no GPU')}"
             + (" (dry run on the CPU)" if report["dry_run"] else ""), "",
             f"Started {report['started_utc']} UTC; {report.get('elapsed_s', '?')} s of a "
             f"{report['budget_s']} s budget. Command: `{report['command']}`.", "",
             "| driver, GPU | torch | torch's CUDA | nvcc | capability |", "|---|---|---|---|---|",
             f"| {pre.get('nvidia_smi')} | {pre.get('torch')} | {pre.get('torch_cuda')} "
             f"| {pre.get('nvcc')} | {pre.get('capability')} |", "", "## Goals", ""]  # fmt: skip
    if report["dry_run"]:
        lines += ["Dry run: tiny CPU stand-ins, so the verdicts mean nothing.", ""]
    lines += [f"- **{g['verdict']}** {g['goal']}: {g['value']}" for g in report["goals"].values()]
    lines += ["", "## Steps", "", "| step | status | seconds | cap | result |",
              "|---|---|---:|---:|---|"]  # fmt: skip
    for name, s in steps.items():
        note = s.get("error") or s.get("summary") or s.get("why") or ""
        lines.append(f"| {name} | {s.get('status')} | {s.get('seconds', '')} | "
                     f"{s.get('cap_s', '')} | {_cell(note)} |")  # fmt: skip
    return "\n".join(lines + _result_tables(steps)) + "\n"


def _result_tables(steps: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for r in steps.get("accuracy", {}).get("rows", []):
        if not lines:
            lines += ["", "## Kernel against the float64 reference (largest error / largest "
                      "magnitude)", "", "| part | batch | dtype | out | grad value | grad loc | "
                      "grad attn |", "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
        e = r["errors"]
        lines.append(
            f"| {r['part']} | {r['batch']} | {r['dtype']} | "
            + " | ".join(
                f"{e[k]['rel']:.2g}" for k in ("out", "grad_value", "grad_loc", "grad_attn")
            )
            + " |"
        )
    op_rows = (steps.get("op_speed", {}).get("report") or {}).get("results", [])
    if op_rows:
        lines += ["", "## Op (800x1333 picture)", "",
                  "| part | batch | dtype | pass | backend | ms | floor ms | speed-up |",
                  "|---|---:|---|---|---|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {r.get('part')} | {r.get('batch')} | {r.get('dtype')} | {r.get('pass')} | "
                  f"{r.get('backend')} | {r.get('ms')} | {r.get('floor_ms')} | "
                  f"{r.get('speedup')} |" for r in op_rows]  # fmt: skip
    fps_rows = _fps_rows(steps)
    if fps_rows:
        lines += ["", "## End to end", "", "| backend | dtype | mode | batch | FPS | p50 ms | "
                  "peak MiB |", "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {r.get('backend')} | {r.get('dtype')} | {r.get('mode')} | "
                  f"{r.get('batch_size')} | {r.get('fps')} | {r.get('latency_ms_p50')} | "
                  f"{r.get('peak_memory_mib')} |" for r in fps_rows]  # fmt: skip
    return lines


def write_report(ctx: Context) -> Path:
    from ddetr_cli.files import atomic_write  # stdlib only: the parent never imports torch

    ctx.report["elapsed_s"] = round(ctx.elapsed(), 1)
    ctx.report["goals"] = evaluate_goals(ctx.report)
    path = ctx.out_dir / f"gpu_{ctx.device_slug}.json"
    with atomic_write(path) as f:
        f.write(json.dumps(ctx.report, indent=1, default=str) + "\n")
    with atomic_write(path.with_suffix(".md")) as f:
        f.write(markdown(ctx.report))
    return path


# --------------------------------------------------------------------------- the run


def run_step(ctx: Context, step: Step) -> dict[str, Any]:
    try:
        entry = step.run(ctx)
        entry.setdefault("status", "ok")
    except StepCut as e:
        entry = {**e.partial, "status": "cut", "error": str(e)}
    except StepFailed as e:
        entry = {**e.partial, "status": "failed", "error": str(e)}
    except Exception as e:  # recorded; the next step still runs
        entry = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                 "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
    return entry


def step_cap(ctx: Context, step: Step) -> float:
    if ctx.simulate.get(step.name) == "cut":
        return SIMULATED_CUT_CAP_S
    if ctx.dry_run:
        return step.cap_s * DRY_RUN_CAP_FACTOR
    return min(step.cap_s, ctx.left()) if step.optional else step.cap_s


def run_all(ctx: Context, steps: list[Step]) -> int:
    stop = ""  # why the remaining steps do not run
    for step in steps:
        ctx.step, ctx.cap = step.name, step_cap(ctx, step)
        t0 = time.monotonic()
        try:
            if stop or (step.optional and ctx.left() < step.least_s):
                why = stop or f"{ctx.left():.0f} s of the budget left, needs {step.least_s:.0f}"
                entry = {"status": "not run", "why": why}
            else:
                ctx.report["steps"][step.name] = {"status": "running", "cap_s": round(ctx.cap)}
                write_report(ctx)
                entry = run_step(ctx, step)
                entry.update(seconds=round(time.monotonic() - t0, 1), cap_s=round(ctx.cap))
        except Stopped as e:
            entry = {"status": "cut", "error": f"the check was stopped ({e})",
                     "seconds": round(time.monotonic() - t0, 1),
                     "cap_s": round(ctx.cap)}  # fmt: skip
            stop = "the check was stopped"
        if step.name == "preflight" and entry["status"] != "ok" and not stop:
            stop = "preflight failed"
        ctx.report["steps"][step.name] = entry
        write_report(ctx)
        note = entry.get("error") or entry.get("summary") or entry.get("why") or ""
        print(f"[{ctx.elapsed():5.0f} s] {step.name:<12} {entry['status']:<8} "
              f"{entry.get('seconds', 0):6.1f} s  {_cell(note)}", flush=True)  # fmt: skip
    return finish(ctx, stopped=stop == "the check was stopped")


def finish(ctx: Context, stopped: bool) -> int:
    path = write_report(ctx)
    for g in ctx.report["goals"].values():
        print(f"{g['verdict']}: {g['goal']} -- {g['value']}")
    print(f"report: {path} and {path.with_suffix('.md').name}; output of every step: "
          f"{ctx.log_path}")  # fmt: skip
    if stopped:
        return 143
    failed = [n for n, s in ctx.report["steps"].items() if s["status"] in ("failed", "cut")]
    if failed:
        print(f"failed or cut: {', '.join(failed)}")
    return 1 if failed else 0


def _stop(signum: int, _frame: Any) -> None:
    # Once: the report of the stop is being written, a second signal must not cut that short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default $OUT when set, else benchmarks/)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="every step in a tiny CPU form")
    p.add_argument("--budget-s", type=float, default=360.0, help="seconds for the whole run")
    p.add_argument("--steps", default="", help="comma-separated steps to run (default all)")
    p.add_argument("--simulate", default="", help="dry run: STEP=fail|cut|hang,...")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one step's child process
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE
    pairs = [item.split("=", 1) for item in args.simulate.split(",") if item.strip()]
    args.simulate = {k.strip(): v.strip() for k, v in pairs}
    names = {s.name for s in STEPS}
    if args.simulate and not args.dry_run:
        p.error("--simulate is for --dry-run only")
    if not set(args.simulate) <= names or not set(args.simulate.values()) <= {
        "fail",
        "cut",
        "hang",
    }:
        p.error(f"--simulate takes STEP=fail|cut|hang with STEP one of {', '.join(names)}")
    args.steps = [s for s in STEPS if not args.steps or s.name in args.steps.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        return run_child(args.child, args.child_out, args.dry_run)
    ctx = Context(args)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        return run_all(ctx, args.steps)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
