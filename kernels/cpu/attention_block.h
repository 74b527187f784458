// Blocked attention for prefill on the CPU: a block of queries against contiguous keys, with
// OpenBLAS sgemm for Q·Kᵀ and P·V (the per-query kernel in span_attention.h serves decode).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/span_attention.h"

namespace sparseserve::kernels::cpu {

// Queries: n rows at positions pos0 .. pos0+n-1; row i's `group` heads at q + i*q_row_stride + g*D.
// Keys/values: L rows, key r at k + r*kv_stride (v likewise), at position key_pos[r] (ascending;
// nullptr means position r). Row i, head g attends the keys allowed by mask_for(pos) — `mask`,
// or for kBlocks the row blocks->row(pos / block_tokens) — and writes
// out + i*out_row_stride + g*D. Queries are processed in blocks of up to 64; a query whose mask
// allows no key gets zeros. Results do not depend on how the caller splits rows into calls of
// equal block alignment (blocks start at row 0 of each call).
struct BlockMask;

// Chunks of at least this many query rows use attend_block; shorter ones (decode) use
// attend_spans per query. Every CPU attention path applies the same rule, so the dense and the
// paged backends compute identical arithmetic for identical keys.
constexpr int64_t kBlockedMinRows = 16;

void attend_block(const float* q, int64_t q_row_stride, int32_t group, int64_t n, int64_t pos0, const float* k,
                  const float* v, int64_t kv_stride, const int64_t* key_pos, int64_t L, const AttentionMask& mask,
                  const BlockMask* blocks, int64_t D, float scale, float* out, int64_t out_row_stride);

}  // namespace sparseserve::kernels::cpu
