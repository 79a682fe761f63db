// Host side of the CUDA kernels: argument checks, allocation, dtype dispatch, and registration as
// torch.ops.ddetr_cuda_kernel.{forward, backward} (dispatcher ops, no pybind11: fast to compile).

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "ms_deform_attn_common.h"
#include "ms_deform_attn_cuda.h"

namespace {

ddetr::DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return ddetr::DType::kFloat32;
    case at::kDouble:
      return ddetr::DType::kFloat64;
    case at::kHalf:
      return ddetr::DType::kFloat16;
    case at::kBFloat16:
      return ddetr::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "ms_deform_attn (cuda kernel): unsupported dtype ", t,
                  " (float32, float64, float16, bfloat16)");
  }
}

ddetr::MsdaDims dims_of(const at::Tensor& value, const at::Tensor& loc) {
  return ddetr::MsdaDims{value.size(0), value.size(1), value.size(2), value.size(3),
                         loc.size(1),   loc.size(3),   loc.size(4)};
}

void check_cuda(const at::Tensor& value) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn (cuda kernel): value must be a CUDA tensor, got ",
              value.device());
}

at::Tensor forward(const at::Tensor& value_in, const at::Tensor& shapes_in,
                   const at::Tensor& starts_in, const at::Tensor& loc_in,
                   const at::Tensor& attn_in) {
  check_cuda(value_in);
  ddetr::check_inputs(value_in, shapes_in, starts_in, loc_in, attn_in);
  const c10::cuda::CUDAGuard guard(value_in.device());
  const auto value = value_in.contiguous();
  const auto shapes = shapes_in.contiguous();
  const auto starts = starts_in.contiguous();
  const auto loc = loc_in.contiguous();
  const auto attn = attn_in.contiguous();
  const auto d = dims_of(value, loc);
  auto out = at::empty({d.N, d.Lq, d.M * d.D}, value.options());
  ddetr::launch_forward(dtype_of(value.scalar_type()), value.const_data_ptr(),
                        shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(),
                        loc.const_data_ptr(), attn.const_data_ptr(), out.mutable_data_ptr(), d,
                        c10::cuda::getCurrentCUDAStream(value.device().index()).stream());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
    const at::Tensor& loc_in, const at::Tensor& attn_in, const at::Tensor& grad_out_in) {
  check_cuda(value_in);
  ddetr::check_inputs(value_in, shapes_in, starts_in, loc_in, attn_in);
  ddetr::check_grad_output(value_in, loc_in, grad_out_in);
  // grad_value (and grad_loc / grad_attn for groups that span warps) accumulate with atomics, so
  // the result may differ in the last bits between runs: like torch's own kernels of that kind,
  // raise (or warn, with warn_only=True) under torch.use_deterministic_algorithms(True).
  at::globalContext().alertNotDeterministic("ms_deform_attn_backward_cuda");
  const c10::cuda::CUDAGuard guard(value_in.device());
  const auto value = value_in.contiguous();
  const auto shapes = shapes_in.contiguous();
  const auto starts = starts_in.contiguous();
  const auto loc = loc_in.contiguous();
  const auto attn = attn_in.contiguous();
  const auto grad_out = grad_out_in.contiguous();
  const auto d = dims_of(value, loc);
  // Gradients accumulate (atomics) in float, or double for float64: grad_loc and grad_attn stay in
  // that type (the locations' and weights'), grad_value is cast to value's afterwards.
  const auto acc = value.options().dtype(ddetr::sampling_type(value.scalar_type()));
  auto grad_value = at::zeros(value.sizes(), acc);
  auto grad_loc = at::zeros(loc.sizes(), acc);
  auto grad_attn = at::zeros(attn.sizes(), acc);
  ddetr::launch_backward(dtype_of(value.scalar_type()), value.const_data_ptr(),
                         shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(),
                         loc.const_data_ptr(), attn.const_data_ptr(), grad_out.const_data_ptr(),
                         grad_value.mutable_data_ptr(), grad_loc.mutable_data_ptr(),
                         grad_attn.mutable_data_ptr(), d,
                         c10::cuda::getCurrentCUDAStream(value.device().index()).stream());
  return {grad_value.to(value.scalar_type()), grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY(ddetr_cuda_kernel, m) {
  m.def(
      "forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ddetr_cuda_kernel, CUDA, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
