// Multi-scale deformable attention: C++ CPU kernel (forward and backward).
//
// Layouts (all contiguous, 64-bit indexing):
//   value               (N, S, M, D)        address ((n*S + s)*M + m)*D + d
//   spatial_shapes      (L, 2) int64        (H, W) per level
//   level_start_index   (L,)   int64
//   sampling_locations  (N, Lq, M, L, P, 2) (x, y) in [0, 1]
//   attention_weights   (N, Lq, M, L, P)
//   output              (N, Lq, M*D)
//
// Sampling rule (grid_sample, align_corners=False, zero padding): pix = loc*size - 0.5; a point is
// sampled only if -1 < h < H and -1 < w < W; corners outside [0,H-1]x[0,W-1] read as zero.
//
// Design: for each query, every point's location, bilinear weights and validity are resolved once
// (software-prefetching the corner rows, whose addresses are data dependent); then each point runs
// one contiguous loop over the D channels that the compiler vectorises. Invalid corners point at a
// zero row (reads) or a private scratch row (writes) with weight 0, so the channel loops are
// branch-free. The workers are compiled for the baseline ISA and for AVX2+FMA, picked at run time
// (no -march=native: the cached build may be reused on another machine), and for D = 32 (the
// model's, as a constant: accumulators stay in registers) and any D. Backward is parallelised over
// (n, m, query chunk): each task owns the grad_value[n, :, m, :] slice (or a private buffer when
// heads are split over queries), so no atomics are needed and results are deterministic.
// Types: value, grad_output and the output are V (float, double, Half or BFloat16), read and written
// as they are; locations, weights, their gradients and every accumulator are T = at::opmath_type<V>
// (float; double for double). A half/bf16 value is thus never copied to float32, and grad_value is
// accumulated in a T buffer and rounded once at the end.

// Registered with the torch dispatcher (torch.ops.ddetr_cpu_kernel.*) rather than pybind11: the
// slim ATen headers compile in seconds where torch/extension.h takes over half a minute.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ms_deform_attn_common.h"

namespace {

// Shapes shared by the forward and backward loops.
struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

// One sampling point resolved into four corner rows and their bilinear weights.
template <typename T>
struct Corners {
  int64_t row[4];  // spatial row index (level_start + h*W + w), or -1 when the corner is outside
  T w[4];          // bilinear weights (0 for outside corners)
  T lh, lw;        // fractional parts, needed by the location gradient
};

// Returns false when the point is outside the sampling window (contributes nothing).
template <typename T>
inline bool resolve_point(T x, T y, int64_t H, int64_t W, int64_t start, Corners<T>& c) {
  const T h_im = y * static_cast<T>(H) - T(0.5);
  const T w_im = x * static_cast<T>(W) - T(0.5);
  // Written so that NaN fails the test and huge values never reach the integer conversion.
  if (!(h_im > T(-1) && w_im > T(-1) && h_im < static_cast<T>(H) && w_im < static_cast<T>(W))) {
    return false;
  }
  const int64_t h0 = static_cast<int64_t>(std::floor(h_im));
  const int64_t w0 = static_cast<int64_t>(std::floor(w_im));
  const int64_t h1 = h0 + 1;
  const int64_t w1 = w0 + 1;
  const T lh = h_im - static_cast<T>(h0);
  const T lw = w_im - static_cast<T>(w0);
  const T hh = T(1) - lh;
  const T hw = T(1) - lw;
  const bool h0_ok = h0 >= 0;
  const bool w0_ok = w0 >= 0;
  const bool h1_ok = h1 <= H - 1;
  const bool w1_ok = w1 <= W - 1;
  c.lh = lh;
  c.lw = lw;
  c.row[0] = (h0_ok && w0_ok) ? start + h0 * W + w0 : -1;
  c.row[1] = (h0_ok && w1_ok) ? start + h0 * W + w1 : -1;
  c.row[2] = (h1_ok && w0_ok) ? start + h1 * W + w0 : -1;
  c.row[3] = (h1_ok && w1_ok) ? start + h1 * W + w1 : -1;
  c.w[0] = c.row[0] >= 0 ? hh * hw : T(0);
  c.w[1] = c.row[1] >= 0 ? hh * lw : T(0);
  c.w[2] = c.row[2] >= 0 ? lh * hw : T(0);
  c.w[3] = c.row[3] >= 0 ? lh * lw : T(0);
  return true;
}

// ---- channel loops (the only hot code; compiled per ISA) -------------------------------------

template <typename T, typename V>
__attribute__((always_inline)) inline void fwd_channels(
    T* __restrict__ acc, const V* __restrict__ v0, const V* __restrict__ v1,
    const V* __restrict__ v2, const V* __restrict__ v3, T c0, T c1, T c2, T c3, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) {
    acc[d] += c0 * static_cast<T>(v0[d]) + c1 * static_cast<T>(v1[d]) +
              c2 * static_cast<T>(v2[d]) + c3 * static_cast<T>(v3[d]);
  }
}

// Accumulates grad_value rows and returns the four dot products <grad_out, value_corner>.
template <typename T, typename V>
__attribute__((always_inline)) inline void bwd_channels(
    const V* __restrict__ g, const V* __restrict__ v0, const V* __restrict__ v1,
    const V* __restrict__ v2, const V* __restrict__ v3, T* __restrict__ gv0, T* __restrict__ gv1,
    T* __restrict__ gv2, T* __restrict__ gv3, T c0, T c1, T c2, T c3, int64_t D, T* dots) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t d = 0; d < D; ++d) {
    const T gd = static_cast<T>(g[d]);
    s0 += gd * static_cast<T>(v0[d]);
    s1 += gd * static_cast<T>(v1[d]);
    s2 += gd * static_cast<T>(v2[d]);
    s3 += gd * static_cast<T>(v3[d]);
    gv0[d] += c0 * gd;
    gv1[d] += c1 * gd;
    gv2[d] += c2 * gd;
    gv3[d] += c3 * gd;
  }
  dots[0] = s0;
  dots[1] = s1;
  dots[2] = s2;
  dots[3] = s3;
}

// ---- per-range workers --------------------------------------------------------------------------

template <typename V, typename T>
struct FwdArgs {
  Dims dims;
  const V* value;
  const int64_t* shapes;
  const int64_t* starts;
  const T* loc;
  const T* attn;
  V* out;
};

// A resolved sampling point: four corner rows (or the zero row) and their weights times attention.
template <typename V, typename T>
struct Tap {
  const V* v[4];
  T c[4];
};

// Hints the cache about a value row that the channel loop will read shortly. Sampling locations
// are data dependent, so without this every corner row is a demand miss the CPU waits on.
template <typename T>
inline void prefetch_row(const T* row, int64_t D) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = std::min<int64_t>(D * static_cast<int64_t>(sizeof(T)), 256);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off);
}

// Processes output rows (n, q) in [begin, end). For each query all M*L*P points are resolved
// first (issuing prefetches), then the channel loops run over the taps of each head.
template <typename V, typename T, int DC>
__attribute__((always_inline)) inline void forward_range_impl(const FwdArgs<V, T>& a,
                                                              int64_t begin, int64_t end) {
  constexpr bool kSameType = std::is_same_v<V, T>;
  const Dims& s = a.dims;
  const int64_t D = DC > 0 ? DC : s.D;  // compile-time for the common D: registers, no tails
  const int64_t MD = s.M * D;
  const int64_t LP = s.L * s.P;
  std::vector<V> zero(D, V(0));
  std::vector<T> acc_row(kSameType ? 0 : D);  // T accumulators when the output is narrower
  std::vector<Tap<V, T>> taps(s.M * LP);
  std::vector<int64_t> count(s.M);
  for (int64_t nq = begin; nq < end; ++nq) {
    const int64_t n = nq / s.Lq;
    const V* base = a.value + n * s.S * MD;  // value[n, 0, 0, 0]
    for (int64_t m = 0; m < s.M; ++m) {
      const V* head = base + m * D;
      const int64_t qm = nq * s.M + m;
      const T* loc = a.loc + qm * LP * 2;
      const T* attn = a.attn + qm * LP;
      Tap<V, T>* t = taps.data() + m * LP;
      int64_t k = 0;
      for (int64_t l = 0; l < s.L; ++l) {
        const int64_t H = a.shapes[2 * l];
        const int64_t W = a.shapes[2 * l + 1];
        const int64_t start = a.starts[l];
        for (int64_t p = 0; p < s.P; ++p) {
          const int64_t i = l * s.P + p;
          Corners<T> c;
          if (!resolve_point(loc[2 * i], loc[2 * i + 1], H, W, start, c)) continue;
          const T aw = attn[i];
          for (int j = 0; j < 4; ++j) {
            const bool ok = c.row[j] >= 0;
            t[k].v[j] = ok ? head + c.row[j] * MD : zero.data();
            t[k].c[j] = c.w[j] * aw;
            if (ok) prefetch_row(t[k].v[j], D);
          }
          ++k;
        }
      }
      count[m] = k;
    }
    for (int64_t m = 0; m < s.M; ++m) {
      V* __restrict__ out = a.out + nq * MD + m * D;
      T* __restrict__ acc;
      if constexpr (kSameType) {
        acc = out;
      } else {
        acc = acc_row.data();
      }
      std::fill(acc, acc + D, T(0));
      const Tap<V, T>* t = taps.data() + m * LP;
      for (int64_t k = 0; k < count[m]; ++k) {
        fwd_channels(acc, t[k].v[0], t[k].v[1], t[k].v[2], t[k].v[3], t[k].c[0], t[k].c[1],
                     t[k].c[2], t[k].c[3], D);
      }
      if constexpr (!kSameType) {
        for (int64_t d = 0; d < D; ++d) out[d] = static_cast<V>(acc[d]);
      }
    }
  }
}

template <typename V, typename T>
struct BwdArgs {
  Dims dims;
  const V* value;
  const int64_t* shapes;
  const int64_t* starts;
  const T* loc;
  const T* attn;
  const V* grad_out;
  T* grad_loc;
  T* grad_attn;
};

// A resolved point for the backward pass: where to read and accumulate, and what the location and
// weight gradients need.
template <typename V, typename T>
struct BwdTap {
  const V* v[4];
  T* gv[4];
  T w[4];     // bilinear weights
  T aw;       // attention weight
  T lh, lw;   // fractional position inside the cell
  T H, W;     // level size (d pix / d loc)
  int64_t i;  // flat point index (n, q, m, l, p) into grad_attn
};

// Queries resolved (and prefetched) ahead of the channel loops.
constexpr int64_t kBwdQueryBlock = 4;

// Processes queries [q_begin, q_end) of head (n, m). gv points at the head's grad_value slice
// (row stride gv_stride): either grad_value[n, :, m, :] itself or a private buffer.
template <typename V, typename T, int DC>
__attribute__((always_inline)) inline void backward_range_impl(const BwdArgs<V, T>& a, int64_t n,
                                                               int64_t m, int64_t q_begin,
                                                               int64_t q_end, T* gv,
                                                               int64_t gv_stride) {
  const Dims& s = a.dims;
  const int64_t D = DC > 0 ? DC : s.D;
  const int64_t MD = s.M * D;
  const int64_t LP = s.L * s.P;
  std::vector<V> zero(D, V(0));
  std::vector<T> sink(4 * D, T(0));  // write target for outside corners (weight 0)
  std::vector<BwdTap<V, T>> taps(kBwdQueryBlock * LP);
  const V* head = a.value + (n * s.S * s.M + m) * D;
  for (int64_t qb = q_begin; qb < q_end; qb += kBwdQueryBlock) {
    const int64_t qe = std::min(q_end, qb + kBwdQueryBlock);
    // The next block's per-query inputs sit M rows apart: fetch them while this block computes.
    for (int64_t q = qe; q < std::min(q_end, qe + kBwdQueryBlock); ++q) {
      const int64_t qm = (n * s.Lq + q) * s.M + m;
      prefetch_row(a.loc + qm * LP * 2, LP * 2);
      prefetch_row(a.attn + qm * LP, LP);
      prefetch_row(a.grad_out + qm * D, D);
    }
    int64_t k = 0;
    for (int64_t q = qb; q < qe; ++q) {
      const int64_t qm = (n * s.Lq + q) * s.M + m;
      const T* loc = a.loc + qm * LP * 2;
      const T* attn = a.attn + qm * LP;
      for (int64_t l = 0; l < s.L; ++l) {
        const int64_t H = a.shapes[2 * l];
        const int64_t W = a.shapes[2 * l + 1];
        const int64_t start = a.starts[l];
        for (int64_t p = 0; p < s.P; ++p) {
          const int64_t i = l * s.P + p;
          const int64_t flat = qm * LP + i;
          Corners<T> c;
          if (!resolve_point(loc[2 * i], loc[2 * i + 1], H, W, start, c)) {
            a.grad_loc[2 * flat] = T(0);
            a.grad_loc[2 * flat + 1] = T(0);
            a.grad_attn[flat] = T(0);
            continue;
          }
          BwdTap<V, T>& t = taps[k++];
          for (int j = 0; j < 4; ++j) {
            const bool ok = c.row[j] >= 0;
            t.v[j] = ok ? head + c.row[j] * MD : zero.data();
            t.gv[j] = ok ? gv + c.row[j] * gv_stride : sink.data() + j * D;
            t.w[j] = c.w[j];
            if (ok) {
              prefetch_row(t.v[j], D);
              prefetch_row(t.gv[j], D);
            }
          }
          t.aw = attn[i];
          t.lh = c.lh;
          t.lw = c.lw;
          t.H = static_cast<T>(H);
          t.W = static_cast<T>(W);
          t.i = flat;
        }
      }
    }
    for (int64_t j = 0; j < k; ++j) {
      const BwdTap<V, T>& t = taps[j];
      const V* g = a.grad_out + (t.i / LP) * D;  // grad_out[n, q, m, :]
      T dots[4];
      bwd_channels(g, t.v[0], t.v[1], t.v[2], t.v[3], t.gv[0], t.gv[1], t.gv[2], t.gv[3],
                   t.w[0] * t.aw, t.w[1] * t.aw, t.w[2] * t.aw, t.w[3] * t.aw, D, dots);
      // sample = sum_k w_k v_k, so d(sample)/d(lw) and d(sample)/d(lh) follow from the dots.
      const T hh = T(1) - t.lh;
      const T hw = T(1) - t.lw;
      a.grad_attn[t.i] = t.w[0] * dots[0] + t.w[1] * dots[1] + t.w[2] * dots[2] + t.w[3] * dots[3];
      const T d_lw = hh * (dots[1] - dots[0]) + t.lh * (dots[3] - dots[2]);
      const T d_lh = hw * (dots[2] - dots[0]) + t.lw * (dots[3] - dots[1]);
      a.grad_loc[2 * t.i] = t.aw * d_lw * t.W;
      a.grad_loc[2 * t.i + 1] = t.aw * d_lh * t.H;
    }
  }
}

// Baseline and AVX2 copies of the workers, each for D = 32 (the model's) and for any D; the lambdas
// inside parallel_for call through a pointer chosen once.
template <typename V, typename T, int DC>
void forward_range_base(const FwdArgs<V, T>& a, int64_t b, int64_t e) {
  forward_range_impl<V, T, DC>(a, b, e);
}
template <typename V, typename T, int DC>
void backward_range_base(const BwdArgs<V, T>& a, int64_t n, int64_t m, int64_t qb, int64_t qe,
                         T* gv, int64_t st) {
  backward_range_impl<V, T, DC>(a, n, m, qb, qe, gv, st);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define DDETR_HAVE_AVX2_PATH 1
template <typename V, typename T, int DC>
__attribute__((target("avx2,fma"))) void forward_range_avx2(const FwdArgs<V, T>& a, int64_t b,
                                                            int64_t e) {
  forward_range_impl<V, T, DC>(a, b, e);
}
template <typename V, typename T, int DC>
__attribute__((target("avx2,fma"))) void backward_range_avx2(const BwdArgs<V, T>& a, int64_t n,
                                                             int64_t m, int64_t qb, int64_t qe,
                                                             T* gv, int64_t st) {
  backward_range_impl<V, T, DC>(a, n, m, qb, qe, gv, st);
}
#endif

bool use_avx2() {
#ifdef DDETR_HAVE_AVX2_PATH
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// ---- host side ---------------------------------------------------------------------------------

// The kernel reads value rows through these numbers, so they must describe memory inside value.
void check_levels(const at::Tensor& shapes, const at::Tensor& starts, int64_t S) {
  const int64_t* sh = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    const int64_t H = sh[2 * l], W = sh[2 * l + 1], b = st[l];
    TORCH_CHECK(H >= 0 && W >= 0 && b >= 0 && b + H * W <= S, "ms_deform_attn: level ", l,
                " (H=", H, ", W=", W, ", start=", b, ") does not fit in value's S=", S);
  }
}

Dims dims_of(const at::Tensor& value, const at::Tensor& loc) {
  return Dims{value.size(0), value.size(1), value.size(2), value.size(3),
              loc.size(1),   loc.size(3),   loc.size(4)};
}

at::Tensor forward(const at::Tensor& value_in, const at::Tensor& shapes_in,
                   const at::Tensor& starts_in, const at::Tensor& loc_in,
                   const at::Tensor& attn_in) {
  TORCH_CHECK(value_in.device().is_cpu(), "ms_deform_attn (cpu kernel): value must be on the CPU");
  ddetr::check_inputs(value_in, shapes_in, starts_in, loc_in, attn_in);
  const auto value = value_in.contiguous();
  const auto loc = loc_in.contiguous();
  const auto attn = attn_in.contiguous();
  const auto shapes = shapes_in.contiguous();
  const auto starts = starts_in.contiguous();
  check_levels(shapes, starts, value.size(1));
  const Dims s = dims_of(value, loc);
  auto out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(),
                                  "ms_deform_attn_forward_cpu", [&] {
    using V = scalar_t;
    using T = at::opmath_type<V>;
    FwdArgs<V, T> a{s,
                    value.const_data_ptr<V>(),
                    shapes.const_data_ptr<int64_t>(),
                    starts.const_data_ptr<int64_t>(),
                    loc.const_data_ptr<T>(),
                    attn.const_data_ptr<T>(),
                    out.mutable_data_ptr<V>()};
    const bool d32 = s.D == 32;
    auto fn = d32 ? &forward_range_base<V, T, 32> : &forward_range_base<V, T, 0>;
#ifdef DDETR_HAVE_AVX2_PATH
    if (use_avx2()) fn = d32 ? &forward_range_avx2<V, T, 32> : &forward_range_avx2<V, T, 0>;
#endif
    // ~16 queries per task keeps scheduling overhead negligible (each is M*L*P points).
    at::parallel_for(0, s.N * s.Lq, 16, [&](int64_t b, int64_t e) { fn(a, b, e); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
    const at::Tensor& loc_in, const at::Tensor& attn_in, const at::Tensor& grad_out_in) {
  TORCH_CHECK(value_in.device().is_cpu(), "ms_deform_attn (cpu kernel): value must be on the CPU");
  ddetr::check_inputs(value_in, shapes_in, starts_in, loc_in, attn_in);
  ddetr::check_grad_output(value_in, loc_in, grad_out_in);
  const auto value = value_in.contiguous();
  const auto loc = loc_in.contiguous();
  const auto attn = attn_in.contiguous();
  const auto shapes = shapes_in.contiguous();
  const auto starts = starts_in.contiguous();
  const auto grad_out = grad_out_in.contiguous();
  check_levels(shapes, starts, value.size(1));
  const Dims s = dims_of(value, loc);

  // grad_value accumulates in the sampling type (float for half/bf16), cast to value's at the end.
  const auto acc = value.options().dtype(ddetr::sampling_type(value.scalar_type()));
  auto grad_value = at::zeros(value.sizes(), acc);
  auto grad_loc = at::empty_like(loc);
  auto grad_attn = at::empty_like(attn);

  // Work items are (n, m, query chunk). With enough heads each item owns a whole head slice of
  // grad_value; otherwise heads are split over queries into private buffers summed afterwards.
  const int64_t heads = s.N * s.M;
  const int64_t threads = at::get_num_threads();
  const int64_t chunks =
      (heads >= threads || s.Lq < 64) ? 1 : std::min<int64_t>((threads + heads - 1) / heads, s.Lq);
  const int64_t q_per_chunk = chunks > 1 ? (s.Lq + chunks - 1) / chunks : s.Lq;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(),
                                  "ms_deform_attn_backward_cpu", [&] {
    using V = scalar_t;
    using T = at::opmath_type<V>;
    BwdArgs<V, T> a{s,
                    value.const_data_ptr<V>(),
                    shapes.const_data_ptr<int64_t>(),
                    starts.const_data_ptr<int64_t>(),
                    loc.const_data_ptr<T>(),
                    attn.const_data_ptr<T>(),
                    grad_out.const_data_ptr<V>(),
                    grad_loc.mutable_data_ptr<T>(),
                    grad_attn.mutable_data_ptr<T>()};
    const bool d32 = s.D == 32;
    auto fn = d32 ? &backward_range_base<V, T, 32> : &backward_range_base<V, T, 0>;
#ifdef DDETR_HAVE_AVX2_PATH
    if (use_avx2()) {
      fn = d32 ? &backward_range_avx2<V, T, 32> : &backward_range_avx2<V, T, 0>;
    }
#endif
    T* gv = grad_value.mutable_data_ptr<T>();
    const int64_t MD = s.M * s.D;
    if (chunks == 1) {
      at::parallel_for(0, heads, 1, [&](int64_t b, int64_t e) {
        for (int64_t h = b; h < e; ++h) {
          const int64_t n = h / s.M, m = h % s.M;
          fn(a, n, m, 0, s.Lq, gv + (n * s.S * s.M + m) * s.D, MD);
        }
      });
    } else {
      // Private (S, D) buffer per (head, chunk), reduced into grad_value afterwards.
      auto buf = at::zeros({heads, chunks, s.S, s.D}, acc);
      T* bp = buf.mutable_data_ptr<T>();
      at::parallel_for(0, heads * chunks, 1, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
          const int64_t h = t / chunks, c = t % chunks;
          const int64_t qb = c * q_per_chunk, qe = std::min(s.Lq, qb + q_per_chunk);
          fn(a, h / s.M, h % s.M, qb, qe, bp + t * s.S * s.D, s.D);
        }
      });
      // (heads, S, D) -> grad_value (N, S, M, D)
      auto summed = buf.sum(1).view({s.N, s.M, s.S, s.D}).permute({0, 2, 1, 3});
      grad_value.copy_(summed);
    }
  });
  return {grad_value.to(value.scalar_type()), grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY(ddetr_cpu_kernel, m) {
  m.def(
      "forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("has_avx2_path() -> bool", &use_avx2);
}

TORCH_LIBRARY_IMPL(ddetr_cpu_kernel, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
