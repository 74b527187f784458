// Element-wise and row-wise transformer ops on fp32 activations (CPU reference + CI backend).
// Activations are row-major [rows, width]; every op parallelises over rows.
#pragma once

#include <cstdint>

namespace sparseserve::kernels::cpu {

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, for rows r < rows. out may alias x.
void rmsnorm(const float* x, const float* weight, float* out, int64_t rows, int64_t width, float eps);

// residual[r] += delta[r]; then out[r] = rmsnorm(residual[r]). (Fused residual add + norm.)
void add_rmsnorm(float* residual, const float* delta, const float* weight, float* out, int64_t rows,
                 int64_t width, float eps);

// x[i] += y[i] over n elements.
void add_inplace(float* x, const float* y, int64_t n);

// gate_up: [rows, 2*width] holding gate then up for each row; out[r, i] = silu(gate) * up.
void silu_mul(const float* gate_up, float* out, int64_t rows, int64_t width);

// Rotary embedding in place on x: rows of n_heads × head_dim values, row r starting at
// x + r * row_stride (row_stride ≥ n_heads * head_dim); positions[r] is row r's absolute position.
// inv_freq[i], i < rope_dim/2, is the angular frequency of pair i (scaling already applied).
// interleaved_pairs: pairs (2i, 2i+1) (GGUF llama); otherwise (i, i + rope_dim/2) (HF / NeoX).
// Angles are computed in double so large positions keep full fp32 accuracy.
void rope(float* x, int64_t row_stride, const int32_t* positions, int64_t rows, int64_t n_heads, int64_t head_dim,
          int64_t rope_dim, const float* inv_freq, bool interleaved_pairs);

// In-place softmax over n values; returns nothing. Max-subtracted, fp32.
void softmax(float* x, int64_t n);

}  // namespace sparseserve::kernels::cpu
