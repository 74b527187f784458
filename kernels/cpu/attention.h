// Dense causal attention with grouped-query heads (CPU reference + CI backend).
#pragma once

#include <cstdint>

#include "kernels/cpu/numerics.h"

namespace sparseserve::kernels::cpu {

// One sequence's chunk of T queries at absolute positions start_pos .. start_pos+T-1.
//   q:   [T, n_heads, head_dim], row t at q + t * q_row_stride
//   k,v: [start_pos + T, n_kv_heads, head_dim]: every key/value of the sequence so far, the chunk's
//        own included (row j is position j).
//   out: [T, n_heads, head_dim]
// Query head h reads KV head h / (n_heads / n_kv_heads). Query t attends to keys j ≤ start_pos + t
// with softmax(q·k / sqrt(head_dim)); fp32 throughout.
// numerics kFast runs chunks of ≥ kBlockedMinRows queries through attend_block (sgemm);
// kBatchInvariant runs every query through attend_spans.
void attention_causal(const float* q, int64_t q_row_stride, const float* k, const float* v, float* out, int64_t T,
                      int64_t start_pos, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                      Numerics numerics = Numerics::kFast);

}  // namespace sparseserve::kernels::cpu
