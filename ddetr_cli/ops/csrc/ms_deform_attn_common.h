// Host-side argument checks shared by the CPU kernel and the CUDA bindings. Every failure is a
// TORCH_CHECK, so Python sees a RuntimeError naming the argument and the shapes it got.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace ddetr {

// The type of sampling_locations, attention_weights and their gradients, which the kernels also
// accumulate in: double for a double value, else float.
inline at::ScalarType sampling_type(at::ScalarType value_type) {
  return value_type == at::kDouble ? at::kDouble : at::kFloat;
}

// value (N, S, M, D); shapes (L, 2); starts (L,); loc (N, Lq, M, L, P, 2); attn (N, Lq, M, L, P).
inline void check_inputs(const at::Tensor& value, const at::Tensor& shapes,
                         const at::Tensor& starts, const at::Tensor& loc, const at::Tensor& attn) {
  for (const auto* t : {&shapes, &starts, &loc, &attn}) {
    TORCH_CHECK(t->device() == value.device(),
                "ms_deform_attn: all inputs must be on value's device (", value.device(),
                "), got one on ", t->device());
  }
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (N, S, M, D), got ", value.sizes());
  const auto vt0 = value.scalar_type();
  TORCH_CHECK(vt0 == at::kFloat || vt0 == at::kDouble || vt0 == at::kHalf || vt0 == at::kBFloat16,
              "ms_deform_attn: value must be float32, float64, float16 or bfloat16, got ", vt0);
  TORCH_CHECK(shapes.dim() == 2 && shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be (L, 2), got ", shapes.sizes());
  TORCH_CHECK(shapes.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes must be int64, got ", shapes.scalar_type());
  TORCH_CHECK(starts.dim() == 1 && starts.size(0) == shapes.size(0),
              "ms_deform_attn: level_start_index must be (L,) with L=", shapes.size(0), ", got ",
              starts.sizes());
  TORCH_CHECK(starts.scalar_type() == at::kLong,
              "ms_deform_attn: level_start_index must be int64, got ", starts.scalar_type());
  const int64_t N = value.size(0), M = value.size(2), L = shapes.size(0);
  TORCH_CHECK(loc.dim() == 6 && loc.size(0) == N && loc.size(2) == M && loc.size(3) == L &&
                  loc.size(5) == 2,
              "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2) with N=", N,
              ", M=", M, ", L=", L, ", got ", loc.sizes());
  TORCH_CHECK(attn.dim() == 5 && attn.sizes() == loc.sizes().slice(0, 5),
              "ms_deform_attn: attention_weights must be (N, Lq, M, L, P) = ",
              loc.sizes().slice(0, 5), ", got ", attn.sizes());
  // value is read as it is; locations and weights come in the type the kernels compute in (a
  // half/bf16 value with float32 locations: what the model gives under autocast).
  const auto vt = value.scalar_type();
  const auto st = sampling_type(vt);
  TORCH_CHECK(loc.scalar_type() == st && attn.scalar_type() == st,
              "ms_deform_attn: sampling_locations and attention_weights must be ", st, " for a ",
              vt, " value (float64 with float64, else float32), got ", loc.scalar_type(), ", ",
              attn.scalar_type());
}

// grad_output (N, Lq, M*D) on value's device.
inline void check_grad_output(const at::Tensor& value, const at::Tensor& loc,
                              const at::Tensor& grad_out) {
  TORCH_CHECK(grad_out.device() == value.device(),
              "ms_deform_attn: grad_output must be on value's device (", value.device(), "), got ",
              grad_out.device());
  const int64_t N = value.size(0), Lq = loc.size(1), MD = value.size(2) * value.size(3);
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == N && grad_out.size(1) == Lq &&
                  grad_out.size(2) == MD,
              "ms_deform_attn: grad_output must be (N, Lq, M*D) = (", N, ", ", Lq, ", ", MD,
              "), got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == value.scalar_type(),
              "ms_deform_attn: grad_output must have value's dtype ", value.scalar_type(), ", got ",
              grad_out.scalar_type());
}

}  // namespace ddetr
