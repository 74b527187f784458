// y = x · Wᵀ with W kept in its stored (possibly quantized) form.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/ggml_types.h"
#include "kernels/cpu/numerics.h"

namespace sparseserve::kernels::cpu {

// A weight matrix of `rows` output features × `cols` input features, row-major: row n is
// row_bytes(type, cols) bytes at data + n * row_stride (blocks of `type` along the input dim).
struct WeightMatrix {
  GgmlType type = GgmlType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const std::byte* data = nullptr;
  size_t row_stride = 0;  // bytes between rows
};

// Numerics::kFast: small M (decode) runs fused dequantize-and-dot kernels, larger M dequantizes tiles
//   of W to fp32 and calls OpenBLAS sgemm (fastest prefill).
// Numerics::kBatchInvariant: every M runs the fused kernels, whose arithmetic for a row of x does
//   not depend on the other rows.

// y[m, n] = Σ_k x[m, k] · W[n, k] (+ bias[n] when bias is non-null), for m < M, n < W.rows.
// x is [M, W.cols] row-major, y is [M, ldy] row-major with ldy ≥ W.rows (ldy 0 means W.rows).
// All arithmetic is fp32. Throws InvalidArgument when cols is not a multiple of the type's block size.
void matmul(const float* x, int64_t M, const WeightMatrix& w, float* y, const float* bias = nullptr,
            int64_t ldy = 0, Numerics numerics = Numerics::kFast);

// Dequantizes row `row` of w into out[w.cols].
void dequantize_weight_row(const WeightMatrix& w, int64_t row, float* out);

}  // namespace sparseserve::kernels::cpu
