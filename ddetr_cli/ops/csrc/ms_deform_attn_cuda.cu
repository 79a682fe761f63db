// Multi-scale deformable attention: CUDA kernels (forward and backward).
//
// Layouts, sampling rule and gradients are those of ms_deform_attn_cpu.cpp. Design:
// - Types: value, grad_output and the output are T (float, half, bfloat16 or double); sampling
//   locations, attention weights and their gradients are the accumulation type A (float; double
//   for double), so a half/bf16 value is read as it is (no copy) with float32 locations, which
//   bf16 could not hold precisely (2^-8: about 0.65 px at W = 167).
// - A group of G = D / CPT consecutive threads serves one (n, q, m); each thread owns CPT
//   consecutive channels. It resolves every point's location, bilinear weights and validity once
//   and reads each corner row slice with 16-byte loads (CPT = 8 for float/half/bf16; any D not
//   divisible by 8, a misaligned pointer, or double takes the CPT = 1 path).
// - The launch decision (CPT, L = P = 4 compiled in, reduction, index type, blocks) is the pure host
//   function plan_launch() in ms_deform_attn_launch.h, tested on the CPU for many shapes; only the
//   variants it can choose are compiled (see there: fast ones for float/half/bf16, one generic).
// - Accumulation in float (double for float64). Forward writes each output once: deterministic.
// - Backward: grad_value by atomicAdd into an accumulation-type buffer (vector float4 atomics on
//   sm_90+): not deterministic, so it reports itself to torch.use_deterministic_algorithms (in the
//   bindings). The per-point grad_attn / grad_loc partial sums are reduced over the group first:
//   with an xor butterfly when G is a power of two <= 32 (the group is aligned inside a warp; lane
//   0 of the group stores), else with a segmented warp reduction whose segment heads (one per warp
//   the group touches: one or two for G <= 32) add atomically. Only sampled points store anything.
// - Index arithmetic in int32 when every element count fits (chosen at launch), else int64;
//   grid-stride loops, so any batch size runs in one launch.
// - Levels whose (H, W, start) do not fit inside S are skipped, so bad metadata cannot read out of
//   bounds. The op (ops/op.py) checks the metadata once per shapes tensor and raises for it, as
//   the CPU kernel does; this is the last guard.

#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ms_deform_attn_cuda.h"
#include "ms_deform_attn_launch.h"

namespace ddetr {
namespace {

// ---- device code (tests/test_kernel_cuda_emulated.py compiles from here to the launchers) ------

// Channels per thread on the vector path; equals vector_width() of the plan for the same dtype
// (1: double has no vector path).
template <typename T>
constexpr int vector_cpt() {
  return std::is_same<T, double>::value ? 1 : 8;
}

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(typename AccOf<T>::type x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ double from_acc<double>(double x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Thread indices in the index type. The built-ins are 32-bit unsigned: convert before multiplying.
template <typename I>
__device__ __forceinline__ I block_start() {
  return static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x);
}
template <typename I>
__device__ __forceinline__ I grid_stride() {
  return static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
}

// CPT consecutive elements, converted to the accumulation type; 16-byte loads when they tile.
// Elements are copied out of the uint4 with memcpy (no type-punned pointer: strict aliasing).
template <typename T, int CPT, typename A>
__device__ __forceinline__ void load_row(const T* __restrict__ p, A (&out)[CPT]) {
  constexpr int kBytes = CPT * static_cast<int>(sizeof(T));
  if constexpr (kBytes % 16 == 0) {
    constexpr int kPer = 16 / static_cast<int>(sizeof(T));
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(p) + i);
      static_assert(std::is_trivially_copyable<T>::value, "element bytes are copied");
      T e[kPer];
      memcpy(static_cast<void*>(e), &u, sizeof(u));  // T is trivially copyable
#pragma unroll
      for (int j = 0; j < kPer; ++j) out[i * kPer + j] = to_acc(e[j]);
    }
  } else {
#pragma unroll
    for (int c = 0; c < CPT; ++c) out[c] = to_acc(p[c]);
  }
}

template <typename T, int CPT, typename A>
__device__ __forceinline__ void store_row(T* __restrict__ p, const A (&in)[CPT]) {
  constexpr int kBytes = CPT * static_cast<int>(sizeof(T));
  if constexpr (kBytes % 16 == 0) {
    constexpr int kPer = 16 / static_cast<int>(sizeof(T));
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) {
      T e[kPer];
#pragma unroll
      for (int j = 0; j < kPer; ++j) e[j] = from_acc<T>(in[i * kPer + j]);
      uint4 u;
      memcpy(&u, static_cast<const void*>(e), sizeof(u));
      reinterpret_cast<uint4*>(p)[i] = u;
    }
  } else {
#pragma unroll
    for (int c = 0; c < CPT; ++c) p[c] = from_acc<T>(in[c]);
  }
}

// grad_value[row, c] += w * g[c] for the thread's CPT channels (16-byte float4 atomics on sm_90+).
template <int CPT, typename A>
__device__ __forceinline__ void atomic_add_row(A* __restrict__ p, A w, const A (&g)[CPT]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same<A, float>::value && CPT % 4 == 0) {
#pragma unroll
    for (int c = 0; c < CPT; c += 4) {
      atomicAdd(reinterpret_cast<float4*>(p + c),
                make_float4(w * g[c], w * g[c + 1], w * g[c + 2], w * g[c + 3]));
    }
  } else
#endif
  {
#pragma unroll
    for (int c = 0; c < CPT; ++c) atomicAdd(p + c, w * g[c]);
  }
}

// Where a sampling point falls: pix = loc * size - 0.5 (grid_sample, align_corners=False).
template <typename A, typename I>
struct Point {
  bool inside;  // -1 < h < H and -1 < w < W: anything to sample at all
  I h0, w0;     // top-left corner
  A lh, lw;     // fractional offsets
};

template <typename I, typename A>
__device__ __forceinline__ Point<A, I> locate(A x, A y, I H, I W) {
  Point<A, I> pt;
  const A h_im = y * static_cast<A>(H) - A(0.5);
  const A w_im = x * static_cast<A>(W) - A(0.5);
  // NaN fails every comparison, and huge values never reach the integer conversion.
  pt.inside = h_im > A(-1) && w_im > A(-1) && h_im < static_cast<A>(H) && w_im < static_cast<A>(W);
  const A hf = pt.inside ? floor(h_im) : A(0);
  const A wf = pt.inside ? floor(w_im) : A(0);
  pt.h0 = static_cast<I>(hf);
  pt.w0 = static_cast<I>(wf);
  pt.lh = pt.inside ? h_im - hf : A(0);
  pt.lw = pt.inside ? w_im - wf : A(0);
  return pt;
}

// Level metadata, checked in int64 before anything is narrowed to the index type.
struct Level {
  bool fits;
  int64_t H, W, start;
};

__device__ __forceinline__ Level load_level(const int64_t* __restrict__ shapes,
                                            const int64_t* __restrict__ starts, int l, int64_t S) {
  Level v;
  v.H = __ldg(shapes + 2 * l);
  v.W = __ldg(shapes + 2 * l + 1);
  v.start = __ldg(starts + l);
  v.fits = v.H >= 0 && v.W >= 0 && v.start >= 0 && v.H <= S && v.W <= S && v.start <= S &&
           v.start + v.H * v.W <= S;
  return v;
}

// ---- forward -----------------------------------------------------------------------------------

// LS / PS: compile-time levels / points (0 = read from dims). I: index type (int32 or int64).
template <typename T, int CPT, int LS, int PS, typename I>
__global__ void __launch_bounds__(kThreads)
    msda_forward_kernel(const T* __restrict__ value, const int64_t* __restrict__ shapes,
                        const int64_t* __restrict__ starts,
                        const typename AccOf<T>::type* __restrict__ loc,
                        const typename AccOf<T>::type* __restrict__ attn, T* __restrict__ out,
                        const MsdaDims d) {
  using A = typename AccOf<T>::type;
  const int L = LS > 0 ? LS : static_cast<int>(d.L);
  const int P = PS > 0 ? PS : static_cast<int>(d.P);
  const I D = static_cast<I>(d.D), M = static_cast<I>(d.M), Lq = static_cast<I>(d.Lq);
  const I S = static_cast<I>(d.S);
  const I G = D / CPT;
  const I MD = M * D;
  const I total = static_cast<I>(d.N) * Lq * M * G;
  const I stride = grid_stride<I>();
  for (I idx = block_start<I>() + static_cast<I>(threadIdx.x); idx < total; idx += stride) {
    const I g = idx % G;
    const I qm = idx / G;  // (n, q, m) flattened
    const I m = qm % M;
    const I n = qm / (M * Lq);
    const T* head = value + n * S * MD + m * D + g * CPT;
    const A* lp = loc + qm * L * P * 2;
    const A* ap = attn + qm * L * P;
    A acc[CPT];
#pragma unroll
    for (int c = 0; c < CPT; ++c) acc[c] = A(0);
#pragma unroll
    for (int l = 0; l < L; ++l) {
      const Level lv = load_level(shapes, starts, l, d.S);
      if (!lv.fits) continue;
      const I H = static_cast<I>(lv.H), W = static_cast<I>(lv.W);
      const T* lvl = head + static_cast<I>(lv.start) * MD;
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int i = l * P + p;
        const Point<A, I> pt = locate(lp[2 * i], lp[2 * i + 1], H, W);
        if (!pt.inside) continue;
        const A aw = ap[i];
        const A hh = A(1) - pt.lh, hw = A(1) - pt.lw;
        const bool h0_ok = pt.h0 >= 0, w0_ok = pt.w0 >= 0;
        const bool h1_ok = pt.h0 + 1 < H, w1_ok = pt.w0 + 1 < W;
        const I r0 = pt.h0 * W + pt.w0;
        A v[CPT];
        if (h0_ok && w0_ok) {
          load_row<T, CPT>(lvl + r0 * MD, v);
          const A w = hh * hw * aw;
#pragma unroll
          for (int c = 0; c < CPT; ++c) acc[c] = fma(w, v[c], acc[c]);
        }
        if (h0_ok && w1_ok) {
          load_row<T, CPT>(lvl + (r0 + 1) * MD, v);
          const A w = hh * pt.lw * aw;
#pragma unroll
          for (int c = 0; c < CPT; ++c) acc[c] = fma(w, v[c], acc[c]);
        }
        if (h1_ok && w0_ok) {
          load_row<T, CPT>(lvl + (r0 + W) * MD, v);
          const A w = pt.lh * hw * aw;
#pragma unroll
          for (int c = 0; c < CPT; ++c) acc[c] = fma(w, v[c], acc[c]);
        }
        if (h1_ok && w1_ok) {
          load_row<T, CPT>(lvl + (r0 + W + 1) * MD, v);
          const A w = pt.lh * pt.lw * aw;
#pragma unroll
          for (int c = 0; c < CPT; ++c) acc[c] = fma(w, v[c], acc[c]);
        }
      }
    }
    store_row<T, CPT>(out + qm * D + g * CPT, acc);
  }
}

// ---- backward ----------------------------------------------------------------------------------

// One corner's share of the backward pass: grad_value update and the dot <grad_out, value row>.
template <typename T, int CPT, typename A>
__device__ __forceinline__ A corner_backward(const T* __restrict__ v_row, A* __restrict__ gv_row,
                                             A w, const A (&go)[CPT], bool write) {
  A v[CPT];
  load_row<T, CPT>(v_row, v);
  A dot = A(0);
#pragma unroll
  for (int c = 0; c < CPT; ++c) dot = fma(go[c], v[c], dot);
  if (write) atomic_add_row<CPT>(gv_row, w, go);
  return dot;
}

// Sum over lanes [lane, seg_end) of the warp, left in the segment's first lane (all 32 lanes
// call it together; seg_end is lane + the number of group lanes from this one to the warp's end).
template <typename A>
__device__ __forceinline__ A segmented_warp_sum(A v, int lane, int seg_end) {
#pragma unroll
  for (int off = 1; off < kWarp; off *= 2) {
    const A other = __shfl_down_sync(0xffffffffu, v, off);
    if (lane + off < seg_end) v += other;
  }
  return v;
}

// RED: how the per-point partial sums are reduced over the G-thread group (see Reduce).
template <typename T, int CPT, int LS, int PS, Reduce RED, typename I>
__global__ void __launch_bounds__(kThreads)
    msda_backward_kernel(const T* __restrict__ value, const int64_t* __restrict__ shapes,
                         const int64_t* __restrict__ starts,
                         const typename AccOf<T>::type* __restrict__ loc,
                         const typename AccOf<T>::type* __restrict__ attn,
                         const T* __restrict__ grad_out,
                         typename AccOf<T>::type* __restrict__ grad_value,
                         typename AccOf<T>::type* __restrict__ grad_loc,
                         typename AccOf<T>::type* __restrict__ grad_attn, const MsdaDims d) {
  using A = typename AccOf<T>::type;
  const int L = LS > 0 ? LS : static_cast<int>(d.L);
  const int P = PS > 0 ? PS : static_cast<int>(d.P);
  const I D = static_cast<I>(d.D), M = static_cast<I>(d.M), Lq = static_cast<I>(d.Lq);
  const I S = static_cast<I>(d.S);
  const I G = D / CPT;
  const I MD = M * D;
  const I total = static_cast<I>(d.N) * Lq * M * G;
  const I stride = grid_stride<I>();
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  // The loop bound is uniform across the block so that every lane reaches the shuffles; lanes
  // past the end redo the last item without writing (each is a segment of its own: g = G - 1).
  for (I base = block_start<I>(); base < total; base += stride) {
    const I raw = base + static_cast<I>(threadIdx.x);
    const bool active = raw < total;
    const I idx = active ? raw : total - 1;
    const I g = idx % G;
    const I qm = idx / G;
    const I m = qm % M;
    const I n = qm / (M * Lq);
    // Segmented reduction: this lane's group continues for G - g lanes (up to the warp's end).
    const int seg_end = static_cast<int>(
        (G - g) < static_cast<I>(kWarp - lane) ? static_cast<I>(lane) + (G - g) : kWarp);
    const bool seg_head = lane == 0 || g == 0;
    const T* head = value + n * S * MD + m * D + g * CPT;
    A* ghead = grad_value + n * S * MD + m * D + g * CPT;
    const A* lp = loc + qm * L * P * 2;
    const A* ap = attn + qm * L * P;
    A go[CPT];
    load_row<T, CPT>(grad_out + qm * D + g * CPT, go);
#pragma unroll
    for (int l = 0; l < L; ++l) {
      const Level lv = load_level(shapes, starts, l, d.S);
      // Sizes of a level that does not fit are never used (its points are not sampled).
      const I H = lv.fits ? static_cast<I>(lv.H) : I(0);
      const I W = lv.fits ? static_cast<I>(lv.W) : I(0);
      const I start = lv.fits ? static_cast<I>(lv.start) : I(0);
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int i = l * P + p;
        const Point<A, I> pt = locate(lp[2 * i], lp[2 * i + 1], H, W);
        // The same for every thread of the group (same point, same level).
        const bool sampled = lv.fits && pt.inside;
        const A aw = ap[i];
        // Partial sums over this thread's channels: grad_attn, d out / d w_im, d out / d h_im.
        A s_attn = A(0), s_w = A(0), s_h = A(0);
        if (sampled) {
          const T* lvl = head + start * MD;
          A* glvl = ghead + start * MD;
          const A hh = A(1) - pt.lh, hw = A(1) - pt.lw;
          const bool h0_ok = pt.h0 >= 0, w0_ok = pt.w0 >= 0;
          const bool h1_ok = pt.h0 + 1 < H, w1_ok = pt.w0 + 1 < W;
          const I r0 = pt.h0 * W + pt.w0;
          if (h0_ok && w0_ok) {
            const A w = hh * hw;
            const A s = corner_backward<T, CPT>(lvl + r0 * MD, glvl + r0 * MD, w * aw, go, active);
            s_attn += w * s;
            s_w -= hh * s;
            s_h -= hw * s;
          }
          if (h0_ok && w1_ok) {
            const A w = hh * pt.lw;
            const A s = corner_backward<T, CPT>(lvl + (r0 + 1) * MD, glvl + (r0 + 1) * MD, w * aw,
                                                go, active);
            s_attn += w * s;
            s_w += hh * s;
            s_h -= pt.lw * s;
          }
          if (h1_ok && w0_ok) {
            const A w = pt.lh * hw;
            const A s = corner_backward<T, CPT>(lvl + (r0 + W) * MD, glvl + (r0 + W) * MD, w * aw,
                                                go, active);
            s_attn += w * s;
            s_w -= pt.lh * s;
            s_h += hw * s;
          }
          if (h1_ok && w1_ok) {
            const A w = pt.lh * pt.lw;
            const A s = corner_backward<T, CPT>(lvl + (r0 + W + 1) * MD, glvl + (r0 + W + 1) * MD,
                                                w * aw, go, active);
            s_attn += w * s;
            s_w += pt.lh * s;
            s_h += pt.lw * s;
          }
        }
        const I flat = qm * L * P + i;
        if constexpr (RED == Reduce::kShuffle) {
          for (int off = static_cast<int>(G) / 2; off > 0; off /= 2) {
            s_attn += __shfl_xor_sync(0xffffffffu, s_attn, off);
            s_w += __shfl_xor_sync(0xffffffffu, s_w, off);
            s_h += __shfl_xor_sync(0xffffffffu, s_h, off);
          }
          // Unsampled points keep the zeros the buffers start with: aw * 0 would be NaN for an
          // infinite or NaN weight.
          if (active && g == 0 && sampled) {
            grad_attn[flat] = s_attn;
            grad_loc[2 * flat] = aw * s_w * static_cast<A>(W);
            grad_loc[2 * flat + 1] = aw * s_h * static_cast<A>(H);
          }
        } else {
          s_attn = segmented_warp_sum(s_attn, lane, seg_end);
          s_w = segmented_warp_sum(s_w, lane, seg_end);
          s_h = segmented_warp_sum(s_h, lane, seg_end);
          if (active && seg_head && sampled) {
            atomicAdd(grad_attn + flat, s_attn);
            atomicAdd(grad_loc + 2 * flat, aw * s_w * static_cast<A>(W));
            atomicAdd(grad_loc + 2 * flat + 1, aw * s_h * static_cast<A>(H));
          }
        }
      }
    }
  }
}

// ---- launchers ---------------------------------------------------------------------------------

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
void forward_typed(const void* value, const int64_t* shapes, const int64_t* starts, const void* loc,
                   const void* attn, void* out, const MsdaDims& d, DType dtype,
                   cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const LaunchPlan plan = plan_launch(dtype, d, aligned16(value) && aligned16(out));
  if (plan.blocks == 0) return;
  dispatch_plan<vector_cpt<T>()>(plan, [&](auto cpt, auto lp, auto /*reduce*/, auto index) {
    using I = typename decltype(index)::type;
    msda_forward_kernel<T, decltype(cpt)::value, decltype(lp)::value, decltype(lp)::value, I>
        <<<static_cast<unsigned int>(plan.blocks), kThreads, 0, stream>>>(
            static_cast<const T*>(value), shapes, starts, static_cast<const A*>(loc),
            static_cast<const A*>(attn), static_cast<T*>(out), d);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void backward_typed(const void* value, const int64_t* shapes, const int64_t* starts,
                    const void* loc, const void* attn, const void* grad_out, void* grad_value,
                    void* grad_loc, void* grad_attn, const MsdaDims& d, DType dtype,
                    cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const bool aligned = aligned16(value) && aligned16(grad_out) && aligned16(grad_value);
  const LaunchPlan plan = plan_launch(dtype, d, aligned);
  if (plan.blocks == 0) return;
  dispatch_plan<vector_cpt<T>()>(plan, [&](auto cpt, auto lp, auto reduce, auto index) {
    using I = typename decltype(index)::type;
    msda_backward_kernel<T, decltype(cpt)::value, decltype(lp)::value, decltype(lp)::value,
                         decltype(reduce)::value, I>
        <<<static_cast<unsigned int>(plan.blocks), kThreads, 0, stream>>>(
            static_cast<const T*>(value), shapes, starts, static_cast<const A*>(loc),
            static_cast<const A*>(attn), static_cast<const T*>(grad_out),
            static_cast<A*>(grad_value), static_cast<A*>(grad_loc), static_cast<A*>(grad_attn), d);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_forward(DType dtype, const void* value, const int64_t* shapes, const int64_t* starts,
                    const void* loc, const void* attn, void* out, const MsdaDims& dims,
                    cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return forward_typed<float>(value, shapes, starts, loc, attn, out, dims, dtype, stream);
    case DType::kFloat64:
      return forward_typed<double>(value, shapes, starts, loc, attn, out, dims, dtype, stream);
    case DType::kFloat16:
      return forward_typed<__half>(value, shapes, starts, loc, attn, out, dims, dtype, stream);
    case DType::kBFloat16:
      return forward_typed<__nv_bfloat16>(value, shapes, starts, loc, attn, out, dims, dtype,
                                          stream);
  }
  TORCH_CHECK(false, "ms_deform_attn (cuda): unsupported dtype");
}

void launch_backward(DType dtype, const void* value, const int64_t* shapes, const int64_t* starts,
                     const void* loc, const void* attn, const void* grad_out, void* grad_value,
                     void* grad_loc, void* grad_attn, const MsdaDims& dims, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return backward_typed<float>(value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc,
                                   grad_attn, dims, dtype, stream);
    case DType::kFloat64:
      return backward_typed<double>(value, shapes, starts, loc, attn, grad_out, grad_value,
                                    grad_loc, grad_attn, dims, dtype, stream);
    case DType::kFloat16:
      return backward_typed<__half>(value, shapes, starts, loc, attn, grad_out, grad_value,
                                    grad_loc, grad_attn, dims, dtype, stream);
    case DType::kBFloat16:
      return backward_typed<__nv_bfloat16>(value, shapes, starts, loc, attn, grad_out, grad_value,
                                           grad_loc, grad_attn, dims, dtype, stream);
  }
  TORCH_CHECK(false, "ms_deform_attn (cuda): unsupported dtype");
}

}  // namespace ddetr
