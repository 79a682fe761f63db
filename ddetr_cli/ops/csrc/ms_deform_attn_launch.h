// The CUDA launch decision as a pure host function: which kernel variant (channels per thread,
// compiled-in L/P, reduction of the backward partial sums, index type) runs for a given dtype,
// shape and pointer alignment, and with how many blocks. No CUDA calls, so the emulation test
// (tests/test_kernel_cuda_emulated.py) compiles it as plain C++ and checks it for many inputs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "ms_deform_attn_cuda.h"

namespace ddetr {

constexpr int kThreads = 256;  // threads per block (a multiple of the 32-lane warp)
constexpr int kWarp = 32;
// Most blocks of one launch; grid-stride loops cover the rest.
constexpr int64_t kMaxBlocks = int64_t{1} << 30;
// 32-bit indexing when every element count and the thread count stay under this: then no index,
// pointer offset or `index + grid stride` sum can pass INT32_MAX.
constexpr int64_t kIndex32Limit = int64_t{1} << 30;

// Channels per thread on the vector path: 32 bytes for float/double, 16 for half/bf16.
constexpr int vector_width(DType t) { return t == DType::kFloat64 ? 4 : 8; }

// How the backward pass sums the per-point partials (grad_attn, grad_loc) over a thread group.
enum class Reduce : int {
  kShuffle = 0,    // group a power of two <= 32, aligned in a warp: xor butterfly, leader stores
  kSegmented = 1,  // any other group: segmented warp reduction, one atomicAdd per warp segment
};

struct LaunchPlan {
  int cpt = 1;            // channels per thread: vector_width(dtype) or 1 (scalar path)
  bool fixed_lp = false;  // L = P = 4 compiled in (the model's configuration)
  int64_t group = 1;      // threads per (n, q, m) = D / cpt
  Reduce reduce = Reduce::kShuffle;
  bool index32 = false;  // 32-bit index arithmetic
  int64_t total = 0;     // work items (threads) = N * Lq * M * group
  int64_t blocks = 0;    // blocks of kThreads (0: nothing to launch)
};

inline bool is_pow2_upto_warp(int64_t g) { return g >= 1 && g <= kWarp && (g & (g - 1)) == 0; }

// aligned: every pointer the vector path reads or writes in 16-byte units is 16-byte aligned
// (forward: value, out; backward: value, grad_out, grad_value).
inline LaunchPlan plan_launch(DType dtype, const MsdaDims& d, bool aligned) {
  LaunchPlan p;
  const int width = vector_width(dtype);
  p.cpt = (aligned && d.D % width == 0) ? width : 1;
  p.fixed_lp = p.cpt > 1 && d.L == 4 && d.P == 4;
  p.group = d.D / p.cpt;
  p.reduce = is_pow2_upto_warp(p.group) ? Reduce::kShuffle : Reduce::kSegmented;
  p.total = d.N * d.Lq * d.M * p.group;
  p.blocks = p.total > 0 ? std::min<int64_t>((p.total + kThreads - 1) / kThreads, kMaxBlocks) : 0;
  const int64_t value_numel = d.N * d.S * d.M * d.D;
  const int64_t out_numel = d.N * d.Lq * d.M * d.D;
  const int64_t loc_numel = d.N * d.Lq * d.M * d.L * d.P * 2;
  const int64_t largest = std::max({value_numel, out_numel, loc_numel, p.blocks * kThreads});
  p.index32 = largest <= kIndex32Limit;
  return p;
}

// Calls f(cpt, ls_ps, reduce, index) with std::integral_constant / type-tag arguments matching the
// plan, so the one switch from runtime plan to compile-time kernel variant is shared by the CUDA
// launchers and the emulation test. Tag<I>::type is the index type.
template <typename I>
struct IndexTag {
  using type = I;
};

template <int VW, typename F>
void dispatch_plan(const LaunchPlan& p, F&& f) {
  using Shfl = std::integral_constant<Reduce, Reduce::kShuffle>;
  using Seg = std::integral_constant<Reduce, Reduce::kSegmented>;
  auto by_index = [&](auto cpt, auto lp, auto red) {
    if (p.index32) {
      f(cpt, lp, red, IndexTag<int32_t>{});
    } else {
      f(cpt, lp, red, IndexTag<int64_t>{});
    }
  };
  auto by_reduce = [&](auto cpt, auto lp) {
    if (p.reduce == Reduce::kShuffle) {
      by_index(cpt, lp, Shfl{});
    } else {
      by_index(cpt, lp, Seg{});
    }
  };
  if (p.cpt == 1) {
    by_reduce(std::integral_constant<int, 1>{}, std::integral_constant<int, 0>{});
  } else if (p.fixed_lp) {
    by_reduce(std::integral_constant<int, VW>{}, std::integral_constant<int, 4>{});
  } else {
    by_reduce(std::integral_constant<int, VW>{}, std::integral_constant<int, 0>{});
  }
}

}  // namespace ddetr
