"""The CUDA kernels' arithmetic, run on the CPU: no GPU needed.

The kernel bodies of csrc/ms_deform_attn_cuda.cu are compiled as host C++ with small stand-ins for
the CUDA built-ins (blockIdx, __ldg, atomicAdd, __shfl_xor_sync). Each emulated warp runs its 32
lanes as real threads that meet at every shuffle, so the warp reductions, the grid-stride loops,
the vector/scalar channel paths and all four dtypes are checked against the reference. What this
cannot check (memory model, sm_90 vector atomics, real alignment faults) is left to the GPU tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ddetr_cli.ops import build
from ddetr_cli.ops.reference import ms_deform_attn_reference

pytestmark = pytest.mark.slow

# Host stand-ins for the CUDA built-ins the kernels use; the kernels follow, then the driver.
PRELUDE = r"""
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>
#include "ms_deform_attn_cuda.h"
#define __global__
#define __launch_bounds__(x)
struct EmuDim { int64_t x = 0; };
thread_local EmuDim blockIdx, threadIdx;
EmuDim blockDim, gridDim;
template <class T> T __ldg(const T* p) { return *p; }
std::mutex emu_atomic_mutex;
template <class T> T atomicAdd(T* p, T v) {
  std::lock_guard<std::mutex> lock(emu_atomic_mutex);
  T old = *p; *p += v; return old;
}
struct EmuWarp { std::barrier<> bar{32}; double slot[32]; };
thread_local EmuWarp* emu_warp = nullptr;
thread_local int emu_lane = 0;
template <class V> V __shfl_xor_sync(unsigned, V v, int off) {
  emu_warp->slot[emu_lane] = static_cast<double>(v);
  emu_warp->bar.arrive_and_wait();
  V r = static_cast<V>(emu_warp->slot[emu_lane ^ off]);
  emu_warp->bar.arrive_and_wait();
  return r;
}
using std::floor;
using std::fma;
namespace ddetr {
namespace {
"""

DRIVER = r"""
template <class F> void run_grid(int64_t blocks, int64_t threads, F f) {
  gridDim.x = blocks;
  blockDim.x = threads;
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t w = 0; w < threads / 32; ++w) {
      EmuWarp warp;
      std::vector<std::thread> lanes;
      for (int l = 0; l < 32; ++l) {
        lanes.emplace_back([&, l] {
          blockIdx.x = b; threadIdx.x = w * 32 + l; emu_warp = &warp; emu_lane = l; f();
        });
      }
      for (auto& t : lanes) t.join();
    }
  }
}

template <class T, int CPT, int LS, int PS, bool SHFL>
void run_typed(const at::Tensor& v, const at::Tensor& sh, const at::Tensor& st,
               const at::Tensor& lo, const at::Tensor& at_, const at::Tensor& go, at::Tensor& out,
               at::Tensor& gv, at::Tensor& gl, at::Tensor& ga, int64_t blocks) {
  using A = typename AccOf<T>::type;
  const MsdaDims d{v.size(0), v.size(1), v.size(2), v.size(3), lo.size(1), lo.size(3), lo.size(4)};
  const auto* sp = sh.data_ptr<int64_t>();
  const auto* tp = st.data_ptr<int64_t>();
  run_grid(blocks, 64, [&] {
    msda_forward_kernel<T, CPT, LS, PS>((const T*)v.data_ptr(), sp, tp, (const T*)lo.data_ptr(),
                                        (const T*)at_.data_ptr(), (T*)out.data_ptr(), d);
  });
  run_grid(blocks, 64, [&] {
    msda_backward_kernel<T, CPT, LS, PS, SHFL>(
        (const T*)v.data_ptr(), sp, tp, (const T*)lo.data_ptr(), (const T*)at_.data_ptr(),
        (const T*)go.data_ptr(), (A*)gv.data_ptr(), (A*)gl.data_ptr(), (A*)ga.data_ptr(), d);
  });
}

// path: 0 scalar (CPT 1), 1 vector with runtime L/P, 2 vector with L = P = 4.
template <class T>
void dispatch(int64_t path, bool shfl, const at::Tensor& v, const at::Tensor& sh,
              const at::Tensor& st, const at::Tensor& lo, const at::Tensor& at_,
              const at::Tensor& go, at::Tensor& out, at::Tensor& gv, at::Tensor& gl,
              at::Tensor& ga, int64_t blocks) {
  constexpr int K = vector_cpt<T>();
#define EMU_RUN(C, L, P) \
  (shfl ? run_typed<T, C, L, P, true>(v, sh, st, lo, at_, go, out, gv, gl, ga, blocks) \
        : run_typed<T, C, L, P, false>(v, sh, st, lo, at_, go, out, gv, gl, ga, blocks))
  if (path == 0) EMU_RUN(1, 0, 0);
  if (path == 1) EMU_RUN(K, 0, 0);
  if (path == 2) EMU_RUN(K, 4, 4);
#undef EMU_RUN
}
}  // namespace
}  // namespace ddetr

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> emulate(
    at::Tensor v, at::Tensor sh, at::Tensor st, at::Tensor lo, at::Tensor at_, at::Tensor go,
    int64_t path, bool shfl, int64_t blocks) {
  auto out = at::zeros({v.size(0), lo.size(1), v.size(2) * v.size(3)}, v.options());
  auto acc = v.options().dtype(v.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  auto gv = at::zeros(v.sizes(), acc), gl = at::zeros(lo.sizes(), acc);
  auto ga = at::zeros(at_.sizes(), acc);
#define EMU_TYPE(S, T)   \
  if (v.scalar_type() == S) \
    ddetr::dispatch<T>(path, shfl, v, sh, st, lo, at_, go, out, gv, gl, ga, blocks);
  EMU_TYPE(at::kFloat, float)
  EMU_TYPE(at::kDouble, double)
  EMU_TYPE(at::kHalf, __half)
  EMU_TYPE(at::kBFloat16, __nv_bfloat16)
  return {out, gv, gl, ga};
}

TORCH_LIBRARY(ddetr_cuda_emulated, m) {
  m.def("emulate(Tensor v, Tensor sh, Tensor st, Tensor lo, Tensor at, Tensor go, int path, "
        "bool shfl, int blocks) -> (Tensor, Tensor, Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(ddetr_cuda_emulated, CPU, m) { m.impl("emulate", &emulate); }
"""


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    home = build._cuda_home()
    if home is None:
        pytest.skip("the CUDA headers (cuda_fp16.h, ...) are not installed")
    if shutil.which("ninja") is None:
        pytest.skip("ninja is not installed")
    source = (build.CSRC / "ms_deform_attn_cuda.cu").read_text()
    start, end = source.index("constexpr int kThreads"), source.index("// ---- launchers")
    folder = tmp_path_factory.mktemp("cuda_emulated")
    cpp = folder / "emulated.cpp"
    cpp.write_text(PRELUDE + source[start:end] + DRIVER)
    from torch.utils.cpp_extension import load

    load(
        name="ddetr_cuda_emulated",
        sources=[str(cpp)],
        extra_include_paths=[str(Path(home) / "include"), str(build.CSRC)],
        extra_cflags=["-O1", "-w"],
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.ddetr_cuda_emulated.emulate


LEVELS = [(5, 6), (3, 4), (2, 2), (1, 1)]


def make_inputs(n, lq, m, d, p, shapes, dtype):
    g = torch.Generator().manual_seed(n + 7 * d + 31 * p)
    s = sum(h * w for h, w in shapes)
    n_levels = len(shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(n, lq, m, n_levels, p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    attn = torch.rand(n, lq, m, n_levels, p, generator=g, dtype=torch.float64)
    grad_out = torch.randn(n, lq, m * d, generator=g, dtype=torch.float64)
    spatial = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial[:, 0] * spatial[:, 1]
    start = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    value, loc, attn, grad_out = (t.to(dtype) for t in (value, loc, attn, grad_out))
    # Points exactly on an outer edge (pix == -1 or size) sample nothing in the kernel but get a
    # one-sided location gradient from grid_sample; coarse half grids hit them, so avoid them.
    size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)
    pix = loc.double() * size[:, None, :] - 0.5
    edge = ((pix == -1) | (pix == size[:, None, :])).any(-1, keepdim=True)
    loc = torch.where(edge, torch.full_like(loc, 0.5), loc)
    return value, spatial, start, loc, attn, grad_out


TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize(
    "path, shfl, channels, points, levels, batch",
    [
        (2, True, 4, 4, 4, 3),  # the model's path (D = 4 * vector width, L = P = 4), warp shuffles
        (2, False, 4, 4, 4, 3),  # same, atomic reduction of the partial sums
        (1, True, 2, 3, 3, 3),  # runtime L/P
        (1, False, 3, 2, 2, 3),  # group of 3 threads: not a power of two
        (1, True, 32, 4, 1, 1),  # a full-warp group
        (0, False, 30, 2, 3, 3),  # scalar path, D = 30
        (0, True, 1, 2, 4, 20),  # D = 1, and enough work for the grid-stride loop to wrap
    ],
)
def test_emulated_cuda_kernels_match_reference(
    emulated, dtype, path, shfl, channels, points, levels, batch
):
    width = 4 if dtype == torch.float64 else 8  # channels per thread on the vector paths
    d = channels if path == 0 else channels * width
    shapes = LEVELS[:levels]
    value, spatial, start, loc, attn, grad_out = make_inputs(batch, 5, 2, d, points, shapes, dtype)
    out, gv, gl, ga = emulated(value, spatial, start, loc, attn, grad_out, path, shfl, 3)
    leaves = [t.double().requires_grad_() for t in (value, loc, attn)]
    want = ms_deform_attn_reference(leaves[0], shapes, leaves[1], leaves[2])
    want.backward(grad_out.double())
    tol = TOLERANCE[dtype]
    for name, got, ref in [
        ("output", out, want.detach()),
        ("grad value", gv, leaves[0].grad),
        ("grad loc", gl, leaves[1].grad),
        ("grad attn", ga, leaves[2].grad),
    ]:
        torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol, msg=name)
