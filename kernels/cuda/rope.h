// Rotary position embedding in place on bf16 (CUDA); twin: kernels/cpu/ops.h rope.
// Layout: rows of n_heads × head_dim bf16 values; row r starts at x + r * row_stride (elements,
// row_stride ≥ n_heads * head_dim, e.g. the q or k part of a fused qkv row). positions[r] (int32,
// device) is row r's absolute position; inv_freq[i] (fp32, device), i < rope_dim / 2, is the angular
// frequency of pair i with any scaling already applied. The first rope_dim values of each head are
// rotated, the rest left as they are.
// Pairs: interleaved_pairs → (2i, 2i+1) (GGUF llama); otherwise (i, i + rope_dim/2) (HF / NeoX).
// Angles: pos · inv_freq is formed exactly in double and reduced modulo 2π in double before an fp32
// sincos, so positions up to 2^31 keep the accuracy of small ones (plain fp32 sincosf(pos · f) is off
// by ~1e-2 rad at position 131072).
// Stream-ordered, no host synchronisation: safe under CUDA graph capture.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <source_location>

namespace sparseserve::kernels::cuda {

void rope(__nv_bfloat16* x, int64_t row_stride, const int32_t* positions, int64_t rows, int64_t n_heads,
          int64_t head_dim, int64_t rope_dim, const float* inv_freq, bool interleaved_pairs, cudaStream_t stream,
          std::source_location loc = std::source_location::current());

}  // namespace sparseserve::kernels::cuda
