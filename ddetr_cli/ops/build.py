"""Build-on-first-use of the compiled ms_deform_attn extensions (CPU and CUDA).

Nothing here runs at import. `load_extension("cpu" | "cuda")` compiles the sources in csrc/ with
torch.utils.cpp_extension into a cache folder keyed by everything that makes a binary incompatible
(Python and torch versions, torch's CUDA version and the toolkit's (nvcc), GPU architectures, a
hash of sources and flags), under a file lock so that concurrent processes (DDP ranks, pytest
workers) build once and the others wait. A finished build is loaded straight from its .so, so
later runs need neither ninja nor a compiler. A toolkit whose major version differs from torch's
CUDA is refused (the extension would link a second CUDA runtime).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

CSRC = Path(__file__).resolve().parent / "csrc"

# Sources and flags per device type. The CPU build never needs nvcc.
_SOURCES = {
    "cpu": ["ms_deform_attn_cpu.cpp"],
    "cuda": ["ms_deform_attn_cuda_bind.cpp", "ms_deform_attn_cuda.cu"],
}
_HEADERS = {
    "cpu": ["ms_deform_attn_common.h"],
    "cuda": ["ms_deform_attn_common.h", "ms_deform_attn_cuda.h", "ms_deform_attn_launch.h"],
}
# -fopenmp: at::parallel_for is header-inline OpenMP; libgomp resolves to the copy torch loaded.
_CFLAGS = ["-O3", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
# No -std flag: cpp_extension passes the standard torch itself was built with.
_NVCC_FLAGS = ["-O3"]

_loaded: dict[str, Any] = {}
_info: dict[str, dict[str, Any]] = {}


class KernelBuildError(RuntimeError):
    """The extension could not be built or loaded; the message is one line with the reason."""


def cache_root() -> Path:
    """Root of the build cache: $DDETR_CACHE_DIR, else ~/.cache/ddetr/ops."""
    env = os.environ.get("DDETR_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddetr" / "ops"


def _cuda_home() -> str | None:
    """CUDA toolkit root. torch guesses dirname(dirname(which nvcc)), which is wrong when the nvcc
    on PATH is a wrapper script (e.g. /usr/local/bin/nvcc), so candidates are checked."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return env
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates += [Path(nvcc).resolve().parent.parent, Path(nvcc).parent.parent]
    candidates.append(Path("/usr/local/cuda"))
    for c in candidates:
        if (c / "include" / "cuda_runtime.h").is_file() and (c / "bin" / "nvcc").exists():
            return str(c)
    return None


@functools.lru_cache(maxsize=8)
def _nvcc_release(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+)\.(\d+)", out)
    return f"{found[1]}.{found[2]}" if found else None


def toolkit_version() -> str | None:
    """The CUDA toolkit's release as nvcc reports it ("13.0"), None without a toolkit."""
    home = _cuda_home()
    return _nvcc_release(str(Path(home) / "bin" / "nvcc")) if home else None


def cuda_arch_list() -> str:
    """Architectures to compile for: $TORCH_CUDA_ARCH_LIST, else the visible GPUs' capabilities."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    if not torch.cuda.is_available():
        raise KernelBuildError(
            "no CUDA GPU is visible and TORCH_CUDA_ARCH_LIST is not set "
            "(e.g. TORCH_CUDA_ARCH_LIST=9.0)"
        )
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in caps)


def _sources_digest(device_type: str) -> str:
    h = hashlib.sha256()
    files = _SOURCES[device_type] + _HEADERS[device_type]
    for name in files:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    h.update(repr((_CFLAGS, _LDFLAGS, _NVCC_FLAGS)).encode())
    return h.hexdigest()[:12]


def build_key(device_type: str) -> str:
    """Cache folder name: everything that makes a built binary incompatible."""
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    if device_type == "cuda":
        if torch.version.cuda is None:
            raise KernelBuildError("this torch build has no CUDA support")
        arch = re.sub(r"[^0-9A-Za-z.+]+", "_", cuda_arch_list())
        acc = f"cu{torch.version.cuda}-nvcc{toolkit_version() or _NO_TOOLKIT}-sm{arch}"
    else:
        acc = "cpu"
    return f"{py}-torch{torch.__version__.split('+')[0]}-{acc}-{_sources_digest(device_type)}"


_NO_TOOLKIT = "none"


def _finished(build_dir: Path, device_type: str) -> bool:
    return (build_dir / "build.json").is_file() and (
        build_dir / f"{_module_name(device_type)}.so"
    ).is_file()


def build_dir(device_type: str) -> Path:
    """The cache folder of this build. Where no CUDA toolkit is installed, a finished build made
    with any toolkit of torch's CUDA major is used as it is (loading it needs no compiler)."""
    key = build_key(device_type)
    folder = cache_root() / key
    if device_type != "cuda" or f"-nvcc{_NO_TOOLKIT}-" not in key or _finished(folder, "cuda"):
        return folder
    major = str(torch.version.cuda).split(".")[0]
    pattern = key.replace(f"-nvcc{_NO_TOOLKIT}-", f"-nvcc{major}.*-")
    done = sorted(p for p in cache_root().glob(pattern) if _finished(p, "cuda"))
    return done[-1] if done else folder


def _module_name(device_type: str) -> str:
    return f"ddetr_ms_deform_attn_{device_type}"


def op_namespace(device_type: str) -> str:
    """torch.ops namespace the library registers (TORCH_LIBRARY in csrc)."""
    return f"ddetr_{device_type}_kernel"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (flock): the OS releases it if the holder dies, so a killed build
    never leaves a stale lock behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # closed by the with-block below
    except OSError as e:
        raise KernelBuildError(f"cannot use the build cache folder {path.parent}: {e}") from e
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _load_so(device_type: str, so_path: Path) -> Any:
    """Loads the library (registers torch.ops.ddetr_<device>_kernel.*); returns that namespace."""
    try:
        torch.ops.load_library(str(so_path))
    except OSError as e:
        raise KernelBuildError(f"cannot load {so_path.name}: {first_line(str(e))}") from e
    return getattr(torch.ops, op_namespace(device_type))


def first_line(text: str) -> str:
    """The most telling line of a build log: the first compiler error ("...: error: ..."), else a
    linker/loader "undefined ..." line, else any other line naming an error, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    patterns = (
        # gcc "x.cpp:1:2: error:", nvcc "x.cu(3): error:"
        r"(^|[\s:)])(fatal )?error( [A-Z]*\d+)?:",
        r"undefined (reference|symbol)",
        r"\berror\b",
    )
    noise = ("Error building extension", "FAILED:", "ninja:", "collect2:")
    for pattern in patterns:
        for ln in lines:
            if re.search(pattern, ln, re.IGNORECASE) and not ln.startswith(noise):
                return ln[:300]
    return lines[-1][:300] if lines else "unknown error"


def _check_toolchain(device_type: str) -> dict[str, Any]:
    """Raises KernelBuildError naming the first missing tool; returns what the build will use."""
    try:
        subprocess.run(["ninja", "--version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise KernelBuildError("ninja is not installed (pip install ninja)") from None
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise KernelBuildError(f"no C++ compiler found ({cxx!r} is not on PATH)")
    tools: dict[str, Any] = {"cxx": cxx}
    if device_type == "cuda":
        if torch.version.cuda is None:
            raise KernelBuildError("this torch build has no CUDA support")
        home = _cuda_home()
        if home is None:
            raise KernelBuildError("nvcc / the CUDA toolkit was not found (set CUDA_HOME)")
        toolkit = toolkit_version()
        if toolkit is None:
            raise KernelBuildError(f"cannot read the CUDA toolkit's version ({home}/bin/nvcc)")
        torch_major = str(torch.version.cuda).split(".")[0]
        if toolkit.split(".")[0] != torch_major:
            raise KernelBuildError(
                f"the CUDA toolkit at {home} is {toolkit} but torch was built with CUDA "
                f"{torch.version.cuda}; set CUDA_HOME to a CUDA {torch_major}.x toolkit"
            )
        tools["cuda_home"] = home
        tools["nvcc"] = toolkit
        tools["arch_list"] = cuda_arch_list()
    return tools


@contextlib.contextmanager
def _build_env(tools: dict[str, Any]) -> Iterator[Any]:
    """Imports cpp_extension with the right CUDA_HOME and TORCH_CUDA_ARCH_LIST; restores both."""
    saved = {k: os.environ.get(k) for k in ("CUDA_HOME", "TORCH_CUDA_ARCH_LIST")}
    if "cuda_home" in tools:
        os.environ["CUDA_HOME"] = tools["cuda_home"]
        os.environ["TORCH_CUDA_ARCH_LIST"] = tools["arch_list"]
    # Importing cpp_extension on a GPU-less machine logs a "No CUDA runtime" warning: not news here.
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as cpp_ext

        if "cuda_home" in tools:
            # The module computed CUDA_HOME once at import; it may have guessed a wrapper's folder.
            cpp_ext.CUDA_HOME = tools["cuda_home"]
        yield cpp_ext
    finally:
        log.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _compile(device_type: str, build_dir: Path, tools: dict[str, Any]) -> None:
    name = _module_name(device_type)
    sources = [str(CSRC / s) for s in _SOURCES[device_type]]
    with _build_env(tools) as cpp_ext:
        try:
            cpp_ext.load(
                name=name,
                sources=sources,
                extra_cflags=list(_CFLAGS),
                extra_ldflags=list(_LDFLAGS),
                extra_cuda_cflags=list(_NVCC_FLAGS) if device_type == "cuda" else None,
                extra_include_paths=[str(CSRC)],
                build_directory=str(build_dir),
                with_cuda=device_type == "cuda",
                verbose=False,
                is_python_module=False,
            )
        except Exception as e:  # compiler, linker, ninja and import errors all end up here
            raise KernelBuildError(f"{device_type} build failed: {first_line(str(e))}") from e


def pending_build(device_type: str) -> Path | None:
    """The cache folder the first use of the extension would compile into, or None when it is
    built (or loaded) already or cannot be named; so that a command can say it is compiling."""
    if device_type in _loaded or device_type not in _SOURCES:
        return None
    try:
        folder = build_dir(device_type)
    except KernelBuildError:
        return None
    return None if _finished(folder, device_type) else folder


def load_extension(device_type: str) -> Any:
    """The compiled extension for "cpu" or "cuda", building it on first use (cached per process).

    Returns the torch.ops namespace with `forward` and `backward` (see csrc for the schemas).
    Raises KernelBuildError with a one-line reason when it cannot be built or loaded.
    """
    if device_type not in _SOURCES:
        raise KernelBuildError(f"no kernel for device type {device_type!r}")
    if device_type in _loaded:
        return _loaded[device_type]
    t0 = time.perf_counter()
    folder = build_dir(device_type)
    name = _module_name(device_type)
    so_path = folder / f"{name}.so"
    marker = folder / "build.json"
    built_now = False
    with _file_lock(folder / ".ddetr.lock"):
        if not (marker.is_file() and so_path.is_file()):
            tools = _check_toolchain(device_type)
            t_build = time.perf_counter()
            _compile(device_type, folder, tools)
            built_now = True
            record = {
                "device_type": device_type,
                "build_seconds": round(time.perf_counter() - t_build, 2),
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                **tools,
            }
            marker.write_text(json.dumps(record, indent=1))
    module = _load_so(device_type, so_path)
    info = json.loads(marker.read_text())
    info.update(
        {"cache_dir": str(folder), "built_now": built_now},
        load_seconds=round(time.perf_counter() - t0, 2),
    )
    _info[device_type] = info
    _loaded[device_type] = module
    return module


def build_info() -> dict[str, dict[str, Any]]:
    """What was loaded this process: per device type, cache folder, whether it was compiled now, how
    long the (original) build took and how long this process spent loading it."""
    return {k: dict(v) for k, v in _info.items()}
