// Element-wise ops on bf16 activations (CUDA): SiLU-and-multiply (twin: kernels/cpu/ops.h silu_mul),
// the token-embedding gather, and bf16 → fp32 widening (twin: common/half.h bf16_to_f32). Arithmetic in fp32, one rounding to bf16 per output element.
// Layouts are row-major and contiguous; any width ≥ 1 works, width % 8 == 0 with 16-byte aligned
// pointers takes the 16-byte load path. Stream-ordered, no host synchronisation (CUDA graph safe).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <source_location>
#include <span>

namespace sparseserve::kernels::cuda {

// gate_up: [rows][2 * width], gate then up in each row; out: [rows][width],
// out[r, i] = silu(gate[r, i]) * up[r, i] with silu(g) = g / (1 + e^-g). out must not overlap gate_up.
void silu_mul(const __nv_bfloat16* gate_up, __nv_bfloat16* out, int64_t rows, int64_t width, cudaStream_t stream,
              std::source_location loc = std::source_location::current());

// Throws InvalidArgument when a token id is outside [0, vocab): run on the host copy of the ids before
// they are uploaded for embedding_gather (the kernel cannot report errors).
void check_token_ids(std::span<const int32_t> ids, int64_t vocab);

// out[r] = table[ids[r]]: table [vocab][width], out [rows][width], ids [rows] int32 (device).
// Precondition: ids checked by check_token_ids. An id outside [0, vocab) still never reads out of
// bounds: its row is filled with NaN so that the broken contract shows.
void embedding_gather(const __nv_bfloat16* table, int64_t vocab, int64_t width, const int32_t* ids, int64_t rows,
                      __nv_bfloat16* out, cudaStream_t stream,
                      std::source_location loc = std::source_location::current());

// out[i] = in[i] as fp32 (exact), i < n. Logits rows for sampling (kernels/cuda/sampling.h reads fp32).
// out must not overlap in.
void widen_bf16(const __nv_bfloat16* in, float* out, int64_t n, cudaStream_t stream,
                std::source_location loc = std::source_location::current());

}  // namespace sparseserve::kernels::cuda
