// The CUDA launch decision as a pure host function: which kernel variant (channels per thread,
// compiled-in L/P, reduction of the backward partial sums, index type) runs for a given dtype,
// shape and pointer alignment, and with how many blocks. No CUDA calls, so the emulation test
// (tests/test_kernel_cuda_emulated.py) compiles it as plain C++ and checks it for many inputs.
//
// Variants are compiled only where they pay: float32, float16 and bfloat16 have fast 32-bit-index
// variants (16-byte vector loads, L = P = 4 compiled in, xor-butterfly reduction); every dtype has
// one generic variant (a channel per thread, L and P read at run time, segmented reduction,
// 64-bit indices) that runs any input. float64 (parity tests, never speed) and problems past the
// 32-bit index limit (batches of hundreds of full-size pictures) take the generic variant.
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

// Channels per thread on the vector path: 32 bytes for float, 16 for half/bf16; 1 (no vector path,
// no fast variants at all) for float64.
constexpr int vector_width(DType t) { return t == DType::kFloat64 ? 1 : 8; }

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

inline int64_t blocks_for(int64_t total) {
  return total > 0 ? std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks) : 0;
}

// The variant that runs anything: one channel per thread, L and P at run time, segmented
// reduction (any group size), 64-bit indices.
inline LaunchPlan generic_plan(const MsdaDims& d) {
  LaunchPlan p;
  p.cpt = 1;
  p.fixed_lp = false;
  p.group = d.D;
  p.reduce = Reduce::kSegmented;
  p.index32 = false;
  p.total = d.N * d.Lq * d.M * p.group;
  p.blocks = blocks_for(p.total);
  return p;
}

// aligned: every pointer the vector path reads or writes in 16-byte units is 16-byte aligned
// (forward: value, out; backward: value, grad_out, grad_value).
inline LaunchPlan plan_launch(DType dtype, const MsdaDims& d, bool aligned) {
  const int width = vector_width(dtype);
  if (width == 1) return generic_plan(d);
  LaunchPlan p;
  p.cpt = (aligned && d.D % width == 0) ? width : 1;
  p.group = d.D / p.cpt;
  // The xor butterfly needs a power-of-two group inside a warp; a scalar group (G = D) always
  // takes the segmented reduction (the scalar path is the slow fallback: one variant less).
  p.reduce = p.cpt > 1 && is_pow2_upto_warp(p.group) ? Reduce::kShuffle : Reduce::kSegmented;
  p.fixed_lp = p.reduce == Reduce::kShuffle && d.L == 4 && d.P == 4;
  p.total = d.N * d.Lq * d.M * p.group;
  p.blocks = blocks_for(p.total);
  const int64_t value_numel = d.N * d.S * d.M * d.D;
  const int64_t out_numel = d.N * d.Lq * d.M * d.D;
  const int64_t loc_numel = d.N * d.Lq * d.M * d.L * d.P * 2;
  const int64_t largest = std::max({value_numel, out_numel, loc_numel, p.blocks * kThreads});
  p.index32 = largest <= kIndex32Limit;
  return p.index32 ? p : generic_plan(d);
}

// Calls f(cpt, ls_ps, reduce, index) with std::integral_constant / type-tag arguments matching the
// plan, so the one switch from runtime plan to compile-time kernel variant is shared by the CUDA
// launchers and the emulation test. IndexTag<I>::type is the index type. VW is the dtype's vector
// width: with VW == 1 (float64) only the generic variant is instantiated.
template <typename I>
struct IndexTag {
  using type = I;
};

template <int VW, typename F>
void dispatch_plan(const LaunchPlan& p, F&& f) {
  using One = std::integral_constant<int, 1>;
  using Runtime = std::integral_constant<int, 0>;  // L, P read from the dims
  using Shfl = std::integral_constant<Reduce, Reduce::kShuffle>;
  using Seg = std::integral_constant<Reduce, Reduce::kSegmented>;
  using I32 = IndexTag<int32_t>;
  if constexpr (VW > 1) {
    using Vec = std::integral_constant<int, VW>;
    using Four = std::integral_constant<int, 4>;
    if (p.index32 && p.cpt == VW) {
      if (p.fixed_lp) {
        f(Vec{}, Four{}, Shfl{}, I32{});
      } else if (p.reduce == Reduce::kShuffle) {
        f(Vec{}, Runtime{}, Shfl{}, I32{});
      } else {
        f(Vec{}, Runtime{}, Seg{}, I32{});
      }
      return;
    }
    if (p.index32) {
      f(One{}, Runtime{}, Seg{}, I32{});
      return;
    }
  }
  f(One{}, Runtime{}, Seg{}, IndexTag<int64_t>{});
}

}  // namespace ddetr
