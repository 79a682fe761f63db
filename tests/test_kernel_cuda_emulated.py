"""The CUDA kernels' arithmetic and launch decision, run on the CPU: no GPU needed.

The kernel bodies of csrc/ms_deform_attn_cuda.cu are compiled as host C++ (with warnings on) with
small stand-ins for the CUDA built-ins (blockIdx & co. as 32-bit unsigned like on the GPU, __ldg,
atomicAdd, __shfl_xor_sync, __shfl_down_sync). Each emulated warp runs its 32 lanes as real threads
that meet at every shuffle, so the warp reductions (xor butterfly and segmented), the grid-stride
loops, the vector/scalar channel paths, both index types and all four value dtypes (float16 and
bfloat16 values with float32 locations and weights, as the model runs under autocast) are checked
against the float64 reference, and every kernel variant the .cu compiles runs at least once. The
launch decision (csrc/ms_deform_attn_launch.h: plan_launch and dispatch_plan) is compiled in too:
the kernels run here are chosen by the same code as on the GPU, and the plan is checked for many
shapes, dtypes and alignments. What this cannot check (memory model, sm_90 vector atomics, real
alignment faults) is left to the GPU tests.
"""

from __future__ import annotations

import itertools
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
#include <cstring>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>
#include "ms_deform_attn_cuda.h"
#include "ms_deform_attn_launch.h"
// Kernels become plain functions (the CUDA headers define these for nvcc's host pass).
#undef __global__
#undef __launch_bounds__
#define __global__
#define __launch_bounds__(x)
// 32-bit unsigned like uint3 / dim3 on the GPU, so an overflowing product shows here too.
struct EmuDim { unsigned int x = 0; };
thread_local EmuDim blockIdx, threadIdx;
EmuDim blockDim, gridDim;
template <class T> T __ldg(const T* p) { return *p; }
std::mutex emu_atomic_mutex;
// Atomic adds that land in grad_loc / grad_attn (the per-point sums), counted to check that a
// group reduces before its leaders add.
const void* emu_point_buffers[2][2] = {};
int64_t emu_point_adds = 0;
// The kernel variant dispatch_plan instantiated and ran: (cpt, L = P compiled in, reduce, index32).
std::vector<std::vector<int64_t>> emu_variants;
template <class T> T atomicAdd(T* p, T v) {
  std::lock_guard<std::mutex> lock(emu_atomic_mutex);
  for (const auto& range : emu_point_buffers) {
    if ((const void*)p >= range[0] && (const void*)p < range[1]) ++emu_point_adds;
  }
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
template <class V> V __shfl_down_sync(unsigned, V v, int off) {
  emu_warp->slot[emu_lane] = static_cast<double>(v);
  emu_warp->bar.arrive_and_wait();
  V r = emu_lane + off < 32 ? static_cast<V>(emu_warp->slot[emu_lane + off]) : v;
  emu_warp->bar.arrive_and_wait();
  return r;
}
using std::floor;
using std::fma;
using std::memcpy;
namespace ddetr {
namespace {
"""

DRIVER = r"""
template <class F> void run_grid(int64_t blocks, int64_t threads, F f) {
  gridDim.x = static_cast<unsigned int>(blocks);
  blockDim.x = static_cast<unsigned int>(threads);
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t w = 0; w < threads / 32; ++w) {
      EmuWarp warp;
      std::vector<std::thread> lanes;
      for (int l = 0; l < 32; ++l) {
        lanes.emplace_back([&, l] {
          blockIdx.x = static_cast<unsigned int>(b);
          threadIdx.x = static_cast<unsigned int>(w * 32 + l);
          emu_warp = &warp;
          emu_lane = l;
          f();
        });
      }
      for (auto& t : lanes) t.join();
    }
  }
}

template <class T>
void run_plan(const LaunchPlan& plan, const MsdaDims& d, const at::Tensor& v, const at::Tensor& sh,
              const at::Tensor& st, const at::Tensor& lo, const at::Tensor& at_,
              const at::Tensor& go, at::Tensor& out, at::Tensor& gv, at::Tensor& gl,
              at::Tensor& ga, int64_t blocks, int64_t threads) {
  using A = typename AccOf<T>::type;
  const auto* sp = sh.data_ptr<int64_t>();
  const auto* tp = st.data_ptr<int64_t>();
  // The same switch from plan to kernel variant as the CUDA launchers.
  dispatch_plan<vector_cpt<T>()>(plan, [&](auto cpt, auto lp, auto reduce, auto index) {
    using I = typename decltype(index)::type;
    constexpr int C = decltype(cpt)::value, LP = decltype(lp)::value;
    constexpr Reduce R = decltype(reduce)::value;
    emu_variants.push_back({C, LP, static_cast<int64_t>(R), std::is_same<I, int32_t>::value});
    run_grid(blocks, threads, [&] {
      msda_forward_kernel<T, C, LP, LP, I>((const T*)v.data_ptr(), sp, tp,
                                           (const A*)lo.data_ptr(), (const A*)at_.data_ptr(),
                                           (T*)out.data_ptr(), d);
    });
    run_grid(blocks, threads, [&] {
      msda_backward_kernel<T, C, LP, LP, R, I>(
          (const T*)v.data_ptr(), sp, tp, (const A*)lo.data_ptr(), (const A*)at_.data_ptr(),
          (const T*)go.data_ptr(), (A*)gv.data_ptr(), (A*)gl.data_ptr(), (A*)ga.data_ptr(), d);
    });
  });
}

DType dtype_of(at::ScalarType t) {
  if (t == at::kDouble) return DType::kFloat64;
  if (t == at::kHalf) return DType::kFloat16;
  if (t == at::kBFloat16) return DType::kBFloat16;
  return DType::kFloat32;
}

template <class I> std::vector<int64_t> probe_indices() {
  return {static_cast<int64_t>(block_start<I>()), static_cast<int64_t>(grid_stride<I>())};
}
}  // namespace
}  // namespace ddetr

using ddetr::LaunchPlan;

std::vector<int64_t> plan_fields(const LaunchPlan& p) {
  return {p.cpt, p.fixed_lp, p.group, static_cast<int64_t>(p.reduce), p.index32, p.total, p.blocks};
}

// The plan for a dtype name ("float32", ...), dims (N, S, M, D, Lq, L, P) and alignment.
std::vector<int64_t> plan(std::string dtype, std::vector<int64_t> dims, bool aligned) {
  const ddetr::DType t = dtype == "float64" ? ddetr::DType::kFloat64
                         : dtype == "float16" ? ddetr::DType::kFloat16
                         : dtype == "bfloat16" ? ddetr::DType::kBFloat16
                                               : ddetr::DType::kFloat32;
  const ddetr::MsdaDims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]};
  return plan_fields(ddetr::plan_launch(t, d, aligned));
}

// Runs the kernels the launcher would choose for these tensors, with `aligned` standing for the
// pointer check; index64 forces 64-bit indexing (small tests would always get 32-bit).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<int64_t>> emulate(
    at::Tensor v, at::Tensor sh, at::Tensor st, at::Tensor lo, at::Tensor at_, at::Tensor go,
    bool aligned, bool index64, int64_t blocks, int64_t threads) {
  auto out = at::zeros({v.size(0), lo.size(1), v.size(2) * v.size(3)}, v.options());
  auto acc = v.options().dtype(v.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  TORCH_CHECK(lo.scalar_type() == acc.dtype() && at_.scalar_type() == acc.dtype(),
              "locations and weights must be of the accumulation type");
  auto gv = at::zeros(v.sizes(), acc), gl = at::zeros(lo.sizes(), acc);
  auto ga = at::zeros(at_.sizes(), acc);
  const ddetr::MsdaDims d{v.size(0), v.size(1), v.size(2), v.size(3),
                          lo.size(1), lo.size(3), lo.size(4)};
  // index64 stands for a problem past the 32-bit limits (small tests never are one).
  const LaunchPlan p = index64 ? ddetr::generic_plan(d)
                               : ddetr::plan_launch(ddetr::dtype_of(v.scalar_type()), d, aligned);
  const auto* glb = static_cast<const char*>(gl.data_ptr());
  const auto* gab = static_cast<const char*>(ga.data_ptr());
  emu_point_buffers[0][0] = glb;
  emu_point_buffers[0][1] = glb + gl.nbytes();
  emu_point_buffers[1][0] = gab;
  emu_point_buffers[1][1] = gab + ga.nbytes();
  emu_point_adds = 0;
  emu_variants.clear();
#define EMU_TYPE(S, T)   \
  if (v.scalar_type() == S) \
    ddetr::run_plan<T>(p, d, v, sh, st, lo, at_, go, out, gv, gl, ga, blocks, threads);
  EMU_TYPE(at::kFloat, float)
  EMU_TYPE(at::kDouble, double)
  EMU_TYPE(at::kHalf, __half)
  EMU_TYPE(at::kBFloat16, __nv_bfloat16)
#undef EMU_TYPE
  TORCH_CHECK(emu_variants.size() == 1, "dispatch_plan ran ", emu_variants.size(), " variants");
  auto fields = plan_fields(p);
  fields.push_back(emu_point_adds);
  fields.insert(fields.end(), emu_variants[0].begin(), emu_variants[0].end());
  return {out, gv, gl, ga, fields};
}

// block_start / grid_stride of the given (32-bit unsigned) built-ins, in int32 and int64.
std::vector<int64_t> index_probe(int64_t block, int64_t block_dim, int64_t grid_dim) {
  blockIdx.x = static_cast<unsigned int>(block);
  blockDim.x = static_cast<unsigned int>(block_dim);
  gridDim.x = static_cast<unsigned int>(grid_dim);
  auto a = ddetr::probe_indices<int64_t>();
  auto b = ddetr::probe_indices<int32_t>();
  return {a[0], a[1], b[0], b[1]};
}

TORCH_LIBRARY(ddetr_cuda_emulated, m) {
  m.def("plan(str dtype, int[] dims, bool aligned) -> int[]");
  m.def("emulate(Tensor v, Tensor sh, Tensor st, Tensor lo, Tensor at, Tensor go, bool aligned, "
        "bool index64, int blocks, int threads) -> (Tensor, Tensor, Tensor, Tensor, int[])");
  m.def("index_probe(int block, int block_dim, int grid_dim) -> int[]");
}
TORCH_LIBRARY_IMPL(ddetr_cuda_emulated, CPU, m) { m.impl("emulate", &emulate); }
TORCH_LIBRARY_IMPL(ddetr_cuda_emulated, CompositeExplicitAutograd, m) {
  m.impl("plan", &plan);
  m.impl("index_probe", &index_probe);
}
"""


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    home = build._cuda_home()
    if home is None:
        pytest.skip("the CUDA headers (cuda_fp16.h, ...) are not installed")
    if shutil.which("ninja") is None:
        pytest.skip("ninja is not installed")
    source = (build.CSRC / "ms_deform_attn_cuda.cu").read_text()
    start, end = source.index("// ---- device code"), source.index("// ---- launchers")
    folder = tmp_path_factory.mktemp("cuda_emulated")
    cpp = folder / "emulated.cpp"
    cpp.write_text(PRELUDE + source[start:end] + DRIVER)
    from torch.utils.cpp_extension import load

    load(
        name="ddetr_cuda_emulated",
        sources=[str(cpp)],
        extra_include_paths=[str(build.CSRC)],
        # Warnings on and fatal (the CUDA and torch headers are system headers: -isystem), except
        # `#pragma unroll`, which is for nvcc.
        extra_cflags=[
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wno-unknown-pragmas",
            f"-isystem{Path(home) / 'include'}",
        ],
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.ddetr_cuda_emulated


LEVELS = [(5, 6), (3, 4), (2, 2), (1, 1)]
SHUFFLE, SEGMENTED = 0, 1
DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16"}
DTYPE_NAMES[torch.bfloat16] = "bfloat16"


def sampling_dtype(dtype):
    """The locations' and weights' dtype (the accumulation type) for a value dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    value, grad_out = value.to(dtype), grad_out.to(dtype)
    loc, attn = loc.to(sampling_dtype(dtype)), attn.to(sampling_dtype(dtype))
    # Points exactly on an outer edge (pix == -1 or size) sample nothing in the kernel but get a
    # one-sided location gradient from grid_sample; avoid them.
    size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)
    pix = loc.double() * size[:, None, :] - 0.5
    edge = ((pix == -1) | (pix == size[:, None, :])).any(-1, keepdim=True)
    loc = torch.where(edge, torch.full_like(loc, 0.5), loc)
    return value, spatial, start, loc, attn, grad_out


# (rtol, atol) against float64 on the same rounded inputs: the output and value's gradient are
# rounded once to value's dtype; the locations' and weights' gradients are float32 (float64)
# whatever value's dtype.
TOLERANCE = {
    torch.float64: ((1e-10, 1e-10), (1e-10, 1e-10)),
    torch.float32: ((1e-5, 1e-5), (1e-5, 1e-5)),
    torch.float16: ((2**-10, 1e-5), (1e-5, 1e-5)),
    torch.bfloat16: ((2**-7, 1e-5), (1e-5, 1e-5)),
}
PLAN_FIELDS = ("cpt", "fixed_lp", "group", "reduce", "index32", "total", "blocks")
VARIANT_FIELDS = ("cpt", "lp", "reduce", "index32")


def run(emulated, inputs, aligned, index64=False, blocks=3, threads=64):
    value, spatial, start, loc, attn, grad_out = inputs
    out, gv, gl, ga, fields = emulated.emulate(
        value, spatial, start, loc, attn, grad_out, aligned, index64, blocks, threads
    )
    plan = dict(zip(PLAN_FIELDS, fields[: len(PLAN_FIELDS)], strict=True))
    plan["point_adds"] = fields[len(PLAN_FIELDS)]
    plan["variant"] = tuple(fields[len(PLAN_FIELDS) + 1 :])
    return (out, gv, gl, ga), plan


def expected_point_adds(loc, shapes, group):
    """(atomic adds of grad_loc / grad_attn by the segment leaders, adds if every thread added):
    3 per sampled point, times the warps its group's threads fall in (warps start at thread
    indices that are multiples of 32)."""
    x, y = loc[..., 0], loc[..., 1]  # (N, Lq, M, L, P) in the kernel's type
    size = torch.tensor(shapes, dtype=loc.dtype)
    h = y * size[:, 0, None] - 0.5
    w = x * size[:, 1, None] - 0.5
    h_max, w_max = size[:, 0, None], size[:, 1, None]
    inside = (h > -1) & (w > -1) & (h < h_max) & (w < w_max)
    sampled = inside.flatten(3).sum(-1).flatten()  # per (n, q, m)
    first = torch.arange(sampled.numel()) * group
    warps = (first + group - 1) // 32 - first // 32 + 1
    return int(3 * (sampled * warps).sum()), int(3 * sampled.sum() * group)


def reference_grads(inputs, shapes):
    value, _, _, loc, attn, grad_out = inputs
    leaves = [t.double().requires_grad_() for t in (value, loc, attn)]
    want = ms_deform_attn_reference(leaves[0], shapes, leaves[1], leaves[2])
    want.backward(grad_out.double())
    return want.detach(), leaves[0].grad, leaves[1].grad, leaves[2].grad


def expected_plan(dtype, dims, aligned, index64=False):
    """The launch rule, written out independently of the C++."""
    n, s, m, d, lq, levels, points = dims

    def plan(cpt, reduce, index32):
        group = d // cpt
        return {
            "cpt": cpt,
            "fixed_lp": cpt > 1 and reduce == SHUFFLE and levels == 4 and points == 4,
            "group": group,
            "reduce": reduce,
            "index32": index32,
            "total": n * lq * m * group,
            "blocks": min(-(-(n * lq * m * group) // 256), 1 << 30),
        }

    generic = plan(1, SEGMENTED, False)
    if dtype == "float64" or index64:
        return generic
    cpt = 8 if aligned and d % 8 == 0 else 1
    group = d // cpt
    pow2 = group <= 32 and group & (group - 1) == 0
    fast = plan(cpt, SHUFFLE if cpt > 1 and pow2 else SEGMENTED, True)
    largest = max(n * s * m * d, n * lq * m * d, n * lq * m * levels * points * 2,
                  fast["blocks"] * 256)  # fmt: skip
    return fast if largest <= 1 << 30 else generic


def variant_of(plan):
    """The kernel variant a plan runs: (cpt, L = P compiled in or 0, reduce, index32)."""
    return (plan["cpt"], 4 if plan["fixed_lp"] else 0, plan["reduce"], int(plan["index32"]))


# Every variant the .cu compiles (ms_deform_attn_launch.h, dispatch_plan): fast 32-bit ones for
# float32/float16/bfloat16, and the generic one, the only one for float64.
GENERIC = (1, 0, SEGMENTED, 0)
FAST_VARIANTS = {
    (8, 4, SHUFFLE, 1),  # the model's: D = 32, L = P = 4
    (8, 0, SHUFFLE, 1),
    (8, 0, SEGMENTED, 1),
    (1, 0, SEGMENTED, 1),  # scalar: unaligned or D % 8 != 0
    GENERIC,
}

# (aligned, D, points, levels, batch, index64, what it covers)
CASES = [
    (True, 32, 4, 4, 3, False),  # the model's path: xor butterfly over 4 lanes, L = P = 4 built in
    (True, 32, 4, 4, 3, True),  # past the 32-bit limits: the generic variant
    (True, 24, 4, 4, 3, False),  # groups of 3 straddle warps: segmented, L/P at run time
    (True, 16, 3, 3, 3, False),  # run-time L/P with the butterfly
    (True, 72, 2, 2, 2, False),  # groups of 9
    (True, 256, 4, 1, 1, False),  # a full-warp group
    (False, 30, 2, 3, 3, False),  # scalar path
    (False, 30, 2, 3, 3, True),  # generic
    (False, 40, 1, 2, 1, False),  # a scalar group over two warps
    (False, 1, 2, 4, 20, False),  # D = 1, the grid-stride loop wraps
]


def case_dims(case, lq=5, heads=2):
    aligned, d, points, levels, batch, index64 = case
    s = sum(h * w for h, w in LEVELS[:levels])
    return (batch, s, heads, d, lq, levels, points)


@pytest.mark.parametrize("dtype", list(DTYPE_NAMES))
def test_cases_run_every_compiled_variant(dtype):
    name = DTYPE_NAMES[dtype]
    ran = {variant_of(expected_plan(name, case_dims(c), c[0], c[5])) for c in CASES}
    assert ran == ({GENERIC} if dtype == torch.float64 else FAST_VARIANTS)


@pytest.mark.parametrize("dtype", list(DTYPE_NAMES))
@pytest.mark.parametrize("case", CASES)
def test_emulated_cuda_kernels_match_reference(emulated, dtype, case):
    aligned, d, points, levels, batch, index64 = case
    shapes = LEVELS[:levels]
    inputs = make_inputs(batch, 5, 2, d, points, shapes, dtype)
    got, plan = run(emulated, inputs, aligned, index64)
    want_plan = expected_plan(DTYPE_NAMES[dtype], case_dims(case), aligned, index64)
    assert {k: plan[k] for k in PLAN_FIELDS} == want_plan
    assert plan["variant"] == variant_of(want_plan)  # what dispatch_plan ran is what was planned
    # Per-point sums: the shuffle path stores them (no atomics); the segmented one adds once per
    # warp a group touches (one or two warps for groups up to 32), not once per thread.
    if plan["reduce"] == SHUFFLE:
        assert plan["point_adds"] == 0
    else:
        adds, per_thread = expected_point_adds(inputs[3], shapes, plan["group"])
        assert plan["point_adds"] == adds
        assert adds < per_thread or plan["group"] == 1  # a group of one is its own segment
    assert [t.dtype for t in got] == [dtype, *[sampling_dtype(dtype)] * 3]
    (rtol, atol), (rtol_s, atol_s) = TOLERANCE[dtype]
    names = ("output", "grad value", "grad loc", "grad attn")
    for name, g, ref in zip(names, got, reference_grads(inputs, shapes), strict=True):
        if name == "grad value" and dtype in (torch.float16, torch.bfloat16):
            g = g.to(dtype)  # the binding rounds the float32 buffer to value's dtype
        tol = (rtol, atol) if name in ("output", "grad value") else (rtol_s, atol_s)
        torch.testing.assert_close(g.double(), ref, rtol=tol[0], atol=tol[1], msg=name)


@pytest.mark.parametrize(
    "aligned, d", [(True, 32), (True, 24), (True, 72), (False, 30), (False, 1), (False, 40)]
)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_unsampled_points_with_bad_weights_give_zero_gradients(emulated, aligned, d, bad):
    """A point outside its level, or on a level whose metadata does not fit in S (skipped), gets
    gradient 0 whatever its weight: `weight * 0` would be NaN for an inf or NaN weight."""
    shapes = LEVELS[:4] if d % 8 == 0 and d // 8 in (4, 3) else LEVELS[:3]
    value, spatial, start, loc, attn, grad_out = make_inputs(2, 5, 2, d, 4, shapes, torch.float32)
    loc = loc.clone()
    loc[..., 0, :2, :] = 3.0  # points 0 and 1 of level 0: far outside
    start = start.clone()
    start[1] = value.shape[1]  # level 1 does not fit in S: skipped
    bad_points = torch.zeros(attn.shape, dtype=torch.bool)
    bad_points[..., 0, :2] = True
    bad_points[..., 1, :] = True
    clean = torch.where(bad_points, torch.zeros_like(attn), attn)
    poisoned = torch.where(bad_points, torch.full_like(attn, bad), attn)
    want, _ = run(emulated, (value, spatial, start, loc, clean, grad_out), aligned)
    got, plan = run(emulated, (value, spatial, start, loc, poisoned, grad_out), aligned)
    assert plan["reduce"] == (SHUFFLE if d == 32 and aligned else SEGMENTED)
    names = ("output", "grad value", "grad loc", "grad attn")
    for name, g, w in zip(names, got, want, strict=True):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, msg=name)
    assert (got[2][bad_points] == 0).all() and (got[3][bad_points] == 0).all()


ENCODER = (2, 22223, 8, 32, 22223, 4, 4)  # 800 x 1333 picture, batch 2: N, S, M, D, Lq, L, P
DECODER = (2, 22223, 8, 32, 300, 4, 4)


@pytest.mark.parametrize("dtype", list(DTYPE_NAMES.values()))
def test_launch_plan(emulated, dtype):
    dims_list = [ENCODER, DECODER, (1, 6, 1, 1, 1, 1, 1), (0, 5, 8, 32, 10, 4, 4)]
    for d, lp in itertools.product(
        (1, 2, 3, 8, 16, 24, 30, 32, 64, 72, 128, 256, 264, 1024), ((4, 4), (3, 2))
    ):
        dims_list.append((2, 100, 8, d, 50, *lp))
    # Past the 32-bit limits: outputs over 2^31 elements, a huge value, many threads, many blocks.
    dims_list += [
        (1, 10, 8, 32, (1 << 23) + 1, 1, 1),
        (1, 1 << 28, 8, 32, 10, 4, 4),
        (4, 100, 8, 1, 1 << 25, 1, 1),
        (64, 10, 8, 1024, 1 << 22, 4, 4),
        (1, 10, 1, 1, (1 << 30) + 1, 1, 1),  # exactly past the limit by one thread block
    ]
    for dims in dims_list:
        for aligned in (True, False):
            got = dict(zip(PLAN_FIELDS, emulated.plan(dtype, list(dims), aligned), strict=True))
            assert got == expected_plan(dtype, dims, aligned), (dims, aligned)
    # Spot checks of the rule itself.
    enc = dict(zip(PLAN_FIELDS, emulated.plan(dtype, list(ENCODER), True), strict=True))
    generic = [1, 0, 32, SEGMENTED, 0]
    if dtype == "float64":  # one variant: generic
        assert [enc[k] for k in PLAN_FIELDS[:5]] == generic
        return
    assert (enc["cpt"], enc["fixed_lp"], enc["group"], enc["reduce"], enc["index32"]) == (
        8, True, 4, SHUFFLE, True,
    )  # fmt: skip
    assert emulated.plan(dtype, list(ENCODER), False)[:5] == [1, 0, 32, SEGMENTED, 1]
    assert emulated.plan(dtype, [1, 10, 8, 32, (1 << 23) + 1, 1, 1], True)[:5] == generic
    assert emulated.plan(dtype, [1, 10, 8, 72, 10, 4, 4], True)[1:4] == [0, 9, SEGMENTED]
    assert emulated.plan(dtype, [1, 10, 8, 256, 10, 4, 4], False)[2:4] == [256, SEGMENTED]
    assert emulated.plan(dtype, [1, 10, 8, 30, 10, 4, 4], True)[:4] == [1, 0, 30, SEGMENTED]
    assert emulated.plan(dtype, [0, 10, 8, 32, 10, 4, 4], True)[5:] == [0, 0]  # nothing to launch


def test_thread_indices_do_not_overflow(emulated):
    """blockIdx.x * blockDim.x of the 32-bit unsigned built-ins, widened before multiplying."""
    block = (1 << 31) + 5
    start, stride, start32, stride32 = emulated.index_probe(block, 256, (1 << 31) + 7)
    assert start == block * 256 and stride == ((1 << 31) + 7) * 256
    assert emulated.index_probe(1000, 256, 4000)[2:] == [256_000, 1_024_000]
