"""The CUDA sources compile with the local nvcc (one architecture, sm_90) and the library loads.

Needs nvcc but no GPU. The build and the load run in a child process with a temporary cache folder,
so this test's library never clashes with the one the GPU tests load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddetr_cli.ops import build

pytestmark = pytest.mark.nvcc

CHILD = """
import json
import torch
from ddetr_cli.ops import build
ext = build.load_extension("cuda")
assert hasattr(ext, "forward") and hasattr(ext, "backward")
print(json.dumps(build.build_info()["cuda"]))
"""


def test_cuda_extension_builds_for_sm90(tmp_path: Path) -> None:
    if torch.version.cuda is None:
        pytest.skip("this torch build has no CUDA support")
    if build._cuda_home() is None:
        pytest.skip("nvcc / the CUDA toolkit is not installed (set CUDA_HOME)")
    env = dict(os.environ, DDETR_CACHE_DIR=str(tmp_path), TORCH_CUDA_ARCH_LIST="9.0")
    root = Path(build.__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["built_now"] and info["arch_list"] == "9.0"
    assert Path(info["cache_dir"]).parent == tmp_path
    assert "sm9.0" in Path(info["cache_dir"]).name
    # The toolkit that built it is recorded and part of the cache key.
    assert info["nvcc"] == build.toolkit_version()
    assert f"-nvcc{info['nvcc']}-" in Path(info["cache_dir"]).name
    # nvcc gets cpp_extension's language standard, the host compiler's (torch's headers need it);
    # an -std of our own would replace it.
    assert not any(flag.startswith("-std") for flag in build._NVCC_FLAGS)
    ninja = (Path(info["cache_dir"]) / "build.ninja").read_text().splitlines()
    cuda_std = re.findall(r"-std=\S+", next(ln for ln in ninja if ln.startswith("cuda_cflags")))
    host_std = re.findall(r"-std=\S+", next(ln for ln in ninja if ln.startswith("cflags")))
    assert len(cuda_std) == 1 and cuda_std == host_std[-1:], (cuda_std, host_std)
