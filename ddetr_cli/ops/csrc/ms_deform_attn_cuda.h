// Launchers of the CUDA kernels (ms_deform_attn_cuda.cu), called by the bindings
// (ms_deform_attn_cuda_bind.cpp). Plain pointers and sizes only, so the .cu needs no ATen headers
// and nvcc compiles it quickly.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace ddetr {

enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16 };

struct MsdaDims {
  int64_t N, S, M, D, Lq, L, P;
};

// value, grad_out and out are of `dtype`; loc, attn and the gradients of all three inputs are of the
// accumulation type (float, or double for float64), which is also what the kernels compute in.
// out (N, Lq, M*D).
void launch_forward(DType dtype, const void* value, const int64_t* shapes, const int64_t* starts,
                    const void* loc, const void* attn, void* out, const MsdaDims& dims,
                    cudaStream_t stream);

// Gradients are written in the accumulation type into buffers the caller zeroed: grad_value
// (N, S, M, D), grad_loc (N, Lq, M, L, P, 2), grad_attn (N, Lq, M, L, P).
void launch_backward(DType dtype, const void* value, const int64_t* shapes, const int64_t* starts,
                     const void* loc, const void* attn, const void* grad_out, void* grad_value,
                     void* grad_loc, void* grad_attn, const MsdaDims& dims, cudaStream_t stream);

}  // namespace ddetr
