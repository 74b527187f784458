// RMSNorm and fused residual-add + RMSNorm on bf16 rows (CUDA); twin: kernels/cpu/ops.h rmsnorm,
// add_rmsnorm. Layouts: x, delta, residual, out are row-major [rows][width] bf16, contiguous (row r
// at r * width); weight is [width] bf16. Arithmetic in fp32, one rounding to bf16 per output element.
// Any width ≥ 1 works; width % 8 == 0 with 16-byte aligned pointers takes the 16-byte load path.
// Stream-ordered, no host synchronisation: safe under CUDA graph capture.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <source_location>

namespace sparseserve::kernels::cuda {

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight. out may alias x.
void rmsnorm(const __nv_bfloat16* x, const __nv_bfloat16* weight, __nv_bfloat16* out, int64_t rows, int64_t width,
             float eps, cudaStream_t stream, std::source_location loc = std::source_location::current());

// residual[r] = bf16(residual[r] + delta[r]); then out[r] = rmsnorm(residual[r]) computed from the
// rounded residual (the value the next layer reads). out may alias delta, not residual.
void add_rmsnorm(__nv_bfloat16* residual, const __nv_bfloat16* delta, const __nv_bfloat16* weight,
                 __nv_bfloat16* out, int64_t rows, int64_t width, float eps, cudaStream_t stream,
                 std::source_location loc = std::source_location::current());

}  // namespace sparseserve::kernels::cuda
