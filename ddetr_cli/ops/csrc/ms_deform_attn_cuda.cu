// Multi-scale deformable attention: CUDA kernels (forward and backward).
//
// Layouts, sampling rule and gradients are those of ms_deform_attn_cpu.cpp. Design:
// - A group of G = D / CPT consecutive threads serves one (n, q, m); each thread owns CPT
//   consecutive channels. It resolves every point's location, bilinear weights and validity once
//   and reads each corner row slice with 16-byte loads (CPT = 8 for float/half/bf16, 4 for double;
//   any D not divisible by that, or a misaligned pointer, takes the CPT = 1 path).
// - Accumulation in float (double for float64). Forward writes each output once: deterministic.
// - Backward: grad_value by atomicAdd into an accumulation-type buffer (vector float4 atomics on
//   sm_90+); the per-point grad_attn / grad_loc partial sums are reduced over the group with warp
//   shuffles when G is a power of two <= 32 (group aligned inside a warp), else with atomics.
// - 64-bit indexing throughout; grid-stride loops, so any batch size runs in one launch.
// - Levels whose (H, W, start) do not fit inside S are skipped, so bad metadata cannot read out of
//   bounds (the CPU kernel raises for them; checking here would need a device sync).

#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ms_deform_attn_cuda.h"

namespace ddetr {
namespace {

constexpr int kThreads = 256;

// Channels per thread on the vector path: 32 bytes for float/double, 16 for half/bf16.
template <typename T>
constexpr int vector_cpt() {
  return std::is_same<T, double>::value ? 4 : 8;
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

// CPT consecutive elements, converted to the accumulation type; 16-byte loads when they tile.
template <typename T, int CPT, typename A>
__device__ __forceinline__ void load_row(const T* __restrict__ p, A (&out)[CPT]) {
  constexpr int kBytes = CPT * static_cast<int>(sizeof(T));
  if constexpr (kBytes % 16 == 0) {
    constexpr int kPer = 16 / static_cast<int>(sizeof(T));
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(p) + i);
      const T* e = reinterpret_cast<const T*>(&u);
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
      uint4 u;
      T* e = reinterpret_cast<T*>(&u);
#pragma unroll
      for (int j = 0; j < kPer; ++j) e[j] = from_acc<T>(in[i * kPer + j]);
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
template <typename A>
struct Point {
  bool inside;     // -1 < h < H and -1 < w < W: anything to sample at all
  int64_t h0, w0;  // top-left corner
  A lh, lw;        // fractional offsets
};

template <typename A>
__device__ __forceinline__ Point<A> locate(A x, A y, int64_t H, int64_t W) {
  Point<A> pt;
  const A h_im = y * static_cast<A>(H) - A(0.5);
  const A w_im = x * static_cast<A>(W) - A(0.5);
  // NaN fails every comparison, and huge values never reach the integer conversion.
  pt.inside = h_im > A(-1) && w_im > A(-1) && h_im < static_cast<A>(H) && w_im < static_cast<A>(W);
  const A hf = pt.inside ? floor(h_im) : A(0);
  const A wf = pt.inside ? floor(w_im) : A(0);
  pt.h0 = static_cast<int64_t>(hf);
  pt.w0 = static_cast<int64_t>(wf);
  pt.lh = pt.inside ? h_im - hf : A(0);
  pt.lw = pt.inside ? w_im - wf : A(0);
  return pt;
}

__device__ __forceinline__ bool level_fits(int64_t H, int64_t W, int64_t start, int64_t S) {
  return H >= 0 && W >= 0 && start >= 0 && start + H * W <= S;
}

// ---- forward -----------------------------------------------------------------------------------

// LS / PS: compile-time levels / points (0 = read from dims).
template <typename T, int CPT, int LS, int PS>
__global__ void __launch_bounds__(kThreads)
    msda_forward_kernel(const T* __restrict__ value, const int64_t* __restrict__ shapes,
                        const int64_t* __restrict__ starts, const T* __restrict__ loc,
                        const T* __restrict__ attn, T* __restrict__ out, const MsdaDims d) {
  using A = typename AccOf<T>::type;
  const int L = LS > 0 ? LS : static_cast<int>(d.L);
  const int P = PS > 0 ? PS : static_cast<int>(d.P);
  const int64_t G = d.D / CPT;
  const int64_t MD = d.M * d.D;
  const int64_t total = d.N * d.Lq * d.M * G;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t g = idx % G;
    const int64_t qm = idx / G;  // (n, q, m) flattened
    const int64_t m = qm % d.M;
    const int64_t n = qm / (d.M * d.Lq);
    const T* head = value + n * d.S * MD + m * d.D + g * CPT;
    const T* lp = loc + qm * L * P * 2;
    const T* ap = attn + qm * L * P;
    A acc[CPT];
#pragma unroll
    for (int c = 0; c < CPT; ++c) acc[c] = A(0);
#pragma unroll
    for (int l = 0; l < L; ++l) {
      const int64_t H = __ldg(shapes + 2 * l);
      const int64_t W = __ldg(shapes + 2 * l + 1);
      const int64_t start = __ldg(starts + l);
      if (!level_fits(H, W, start, d.S)) continue;
      const T* lvl = head + start * MD;
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int i = l * P + p;
        const Point<A> pt = locate(to_acc(lp[2 * i]), to_acc(lp[2 * i + 1]), H, W);
        if (!pt.inside) continue;
        const A aw = to_acc(ap[i]);
        const A hh = A(1) - pt.lh, hw = A(1) - pt.lw;
        const bool h0_ok = pt.h0 >= 0, w0_ok = pt.w0 >= 0;
        const bool h1_ok = pt.h0 + 1 < H, w1_ok = pt.w0 + 1 < W;
        const int64_t r0 = pt.h0 * W + pt.w0;
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
    store_row<T, CPT>(out + qm * d.D + g * CPT, acc);
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

// SHFL: reduce the per-point partial sums over the G-thread group with warp shuffles (requires G
// a power of two <= 32); otherwise every thread atomically adds its partials.
template <typename T, int CPT, int LS, int PS, bool SHFL>
__global__ void __launch_bounds__(kThreads)
    msda_backward_kernel(const T* __restrict__ value, const int64_t* __restrict__ shapes,
                         const int64_t* __restrict__ starts, const T* __restrict__ loc,
                         const T* __restrict__ attn, const T* __restrict__ grad_out,
                         typename AccOf<T>::type* __restrict__ grad_value,
                         typename AccOf<T>::type* __restrict__ grad_loc,
                         typename AccOf<T>::type* __restrict__ grad_attn, const MsdaDims d) {
  using A = typename AccOf<T>::type;
  const int L = LS > 0 ? LS : static_cast<int>(d.L);
  const int P = PS > 0 ? PS : static_cast<int>(d.P);
  const int64_t G = d.D / CPT;
  const int64_t MD = d.M * d.D;
  const int64_t total = d.N * d.Lq * d.M * G;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // The loop bound is uniform across the block so that every lane reaches the shuffles; lanes
  // past the end redo the last item without writing (their groups are whole, since G | 32).
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x; base < total; base += stride) {
    const int64_t raw = base + threadIdx.x;
    const bool active = raw < total;
    const int64_t idx = active ? raw : total - 1;
    const int64_t g = idx % G;
    const int64_t qm = idx / G;
    const int64_t m = qm % d.M;
    const int64_t n = qm / (d.M * d.Lq);
    const T* head = value + n * d.S * MD + m * d.D + g * CPT;
    A* ghead = grad_value + n * d.S * MD + m * d.D + g * CPT;
    const T* lp = loc + qm * L * P * 2;
    const T* ap = attn + qm * L * P;
    A go[CPT];
    load_row<T, CPT>(grad_out + qm * d.D + g * CPT, go);
#pragma unroll
    for (int l = 0; l < L; ++l) {
      const int64_t H = __ldg(shapes + 2 * l);
      const int64_t W = __ldg(shapes + 2 * l + 1);
      const int64_t start = __ldg(starts + l);
      const bool fits = level_fits(H, W, start, d.S);
      const T* lvl = head + start * MD;
      A* glvl = ghead + start * MD;
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int i = l * P + p;
        const Point<A> pt = locate(to_acc(lp[2 * i]), to_acc(lp[2 * i + 1]), H, W);
        const A aw = to_acc(ap[i]);
        // Partial sums over this thread's channels: grad_attn, d out / d w_im, d out / d h_im.
        A s_attn = A(0), s_w = A(0), s_h = A(0);
        if (fits && pt.inside) {
          const A hh = A(1) - pt.lh, hw = A(1) - pt.lw;
          const bool h0_ok = pt.h0 >= 0, w0_ok = pt.w0 >= 0;
          const bool h1_ok = pt.h0 + 1 < H, w1_ok = pt.w0 + 1 < W;
          const int64_t r0 = pt.h0 * W + pt.w0;
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
        const int64_t flat = qm * L * P + i;
        if constexpr (SHFL) {
          for (int off = static_cast<int>(G) / 2; off > 0; off /= 2) {
            s_attn += __shfl_xor_sync(0xffffffffu, s_attn, off);
            s_w += __shfl_xor_sync(0xffffffffu, s_w, off);
            s_h += __shfl_xor_sync(0xffffffffu, s_h, off);
          }
          if (active && g == 0) {
            grad_attn[flat] = s_attn;
            grad_loc[2 * flat] = aw * s_w * static_cast<A>(W);
            grad_loc[2 * flat + 1] = aw * s_h * static_cast<A>(H);
          }
        } else if (active && fits && pt.inside) {
          atomicAdd(grad_attn + flat, s_attn);
          atomicAdd(grad_loc + 2 * flat, aw * s_w * static_cast<A>(W));
          atomicAdd(grad_loc + 2 * flat + 1, aw * s_h * static_cast<A>(H));
        }
      }
    }
  }
}

// ---- launchers ---------------------------------------------------------------------------------

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

unsigned int num_blocks(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(blocks, int64_t{1} << 30));
}

template <typename T, int CPT, int LS, int PS>
void forward_launch(const T* value, const int64_t* shapes, const int64_t* starts, const T* loc,
                    const T* attn, T* out, const MsdaDims& d, cudaStream_t stream) {
  const int64_t total = d.N * d.Lq * d.M * (d.D / CPT);
  if (total == 0) return;
  msda_forward_kernel<T, CPT, LS, PS>
      <<<num_blocks(total), kThreads, 0, stream>>>(value, shapes, starts, loc, attn, out, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void forward_typed(const void* value, const int64_t* shapes, const int64_t* starts, const void* loc,
                   const void* attn, void* out, const MsdaDims& d, cudaStream_t stream) {
  const T* v = static_cast<const T*>(value);
  const T* lo = static_cast<const T*>(loc);
  const T* at = static_cast<const T*>(attn);
  T* o = static_cast<T*>(out);
  constexpr int kCpt = vector_cpt<T>();
  if (d.D % kCpt == 0 && aligned16(value) && aligned16(out)) {
    if (d.L == 4 && d.P == 4) {
      forward_launch<T, kCpt, 4, 4>(v, shapes, starts, lo, at, o, d, stream);
    } else {
      forward_launch<T, kCpt, 0, 0>(v, shapes, starts, lo, at, o, d, stream);
    }
  } else {
    forward_launch<T, 1, 0, 0>(v, shapes, starts, lo, at, o, d, stream);
  }
}

template <typename T, int CPT, int LS, int PS>
void backward_launch(const T* value, const int64_t* shapes, const int64_t* starts, const T* loc,
                     const T* attn, const T* grad_out, typename AccOf<T>::type* gv,
                     typename AccOf<T>::type* gl, typename AccOf<T>::type* ga, const MsdaDims& d,
                     cudaStream_t stream) {
  const int64_t G = d.D / CPT;
  const int64_t total = d.N * d.Lq * d.M * G;
  if (total == 0) return;
  const bool shfl = G <= 32 && (G & (G - 1)) == 0;
  if (shfl) {
    msda_backward_kernel<T, CPT, LS, PS, true><<<num_blocks(total), kThreads, 0, stream>>>(
        value, shapes, starts, loc, attn, grad_out, gv, gl, ga, d);
  } else {
    msda_backward_kernel<T, CPT, LS, PS, false><<<num_blocks(total), kThreads, 0, stream>>>(
        value, shapes, starts, loc, attn, grad_out, gv, gl, ga, d);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void backward_typed(const void* value, const int64_t* shapes, const int64_t* starts,
                    const void* loc, const void* attn, const void* grad_out, void* grad_value,
                    void* grad_loc, void* grad_attn, const MsdaDims& d, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const T* v = static_cast<const T*>(value);
  const T* lo = static_cast<const T*>(loc);
  const T* at = static_cast<const T*>(attn);
  const T* go = static_cast<const T*>(grad_out);
  A* gv = static_cast<A*>(grad_value);
  A* gl = static_cast<A*>(grad_loc);
  A* ga = static_cast<A*>(grad_attn);
  constexpr int kCpt = vector_cpt<T>();
  if (d.D % kCpt == 0 && aligned16(value) && aligned16(grad_out) && aligned16(grad_value)) {
    if (d.L == 4 && d.P == 4) {
      backward_launch<T, kCpt, 4, 4>(v, shapes, starts, lo, at, go, gv, gl, ga, d, stream);
    } else {
      backward_launch<T, kCpt, 0, 0>(v, shapes, starts, lo, at, go, gv, gl, ga, d, stream);
    }
  } else {
    backward_launch<T, 1, 0, 0>(v, shapes, starts, lo, at, go, gv, gl, ga, d, stream);
  }
}

}  // namespace

void launch_forward(DType dtype, const void* value, const int64_t* shapes, const int64_t* starts,
                    const void* loc, const void* attn, void* out, const MsdaDims& dims,
                    cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return forward_typed<float>(value, shapes, starts, loc, attn, out, dims, stream);
    case DType::kFloat64:
      return forward_typed<double>(value, shapes, starts, loc, attn, out, dims, stream);
    case DType::kFloat16:
      return forward_typed<__half>(value, shapes, starts, loc, attn, out, dims, stream);
    case DType::kBFloat16:
      return forward_typed<__nv_bfloat16>(value, shapes, starts, loc, attn, out, dims, stream);
  }
  TORCH_CHECK(false, "ms_deform_attn (cuda): unsupported dtype");
}

void launch_backward(DType dtype, const void* value, const int64_t* shapes, const int64_t* starts,
                     const void* loc, const void* attn, const void* grad_out, void* grad_value,
                     void* grad_loc, void* grad_attn, const MsdaDims& dims, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return backward_typed<float>(value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc,
                                   grad_attn, dims, stream);
    case DType::kFloat64:
      return backward_typed<double>(value, shapes, starts, loc, attn, grad_out, grad_value,
                                    grad_loc, grad_attn, dims, stream);
    case DType::kFloat16:
      return backward_typed<__half>(value, shapes, starts, loc, attn, grad_out, grad_value,
                                    grad_loc, grad_attn, dims, stream);
    case DType::kBFloat16:
      return backward_typed<__nv_bfloat16>(value, shapes, starts, loc, attn, grad_out, grad_value,
                                           grad_loc, grad_attn, dims, stream);
  }
  TORCH_CHECK(false, "ms_deform_attn (cuda): unsupported dtype");
}

}  // namespace ddetr
