// Appends new K/V rows to the paged KV pool (CUDA); twin: engine/cpu_kv_storage.h CpuKvStorage::write.
// Pool layout (kvcache/README.md: one page = page_tokens tokens of one (layer, KV head) lane):
//   k, v        [num_pages][page_tokens][head_dim] bf16 (K after RoPE)
//   kmin, kmax  [num_pages][page_tokens / logical_page_tokens][head_dim] bf16: element-wise min / max
//               of K over each logical sub-page (exact: K is bf16; null when the pool keeps no metadata)
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <source_location>

namespace sparseserve::kernels::cuda {

struct KvPoolView {
  __nv_bfloat16* k = nullptr;
  __nv_bfloat16* v = nullptr;
  __nv_bfloat16* kmin = nullptr;  // optional (both or neither)
  __nv_bfloat16* kmax = nullptr;
  int64_t num_pages = 0;
  int32_t page_tokens = 0;          // P
  int32_t logical_page_tokens = 0;  // LP, divides P
  int32_t head_dim = 0;             // D
};

// The rows to append, all device arrays of `rows` entries, each row holding `heads` KV heads (one
// launch for all KV heads of a layer):
//   head h's key of row n at k_new + n * k_stride + h * head_dim, its value at v_new + n * v_stride +
//   h * head_dim (head_dim values each; strides in elements, ≥ heads * head_dim, e.g. fused qkv rows);
//   page_ids[h * rows + n]: head h's destination page ([heads][rows]); offsets[n]: the token offset
//   (< P) in it, the same for every head;
//   with_metadata[n] (optional; null = every row): fold row n's keys into kmin/kmax (retrieval lanes).
// Contract (as for CpuKvStorage, where pages fill in order): the rows of a batch go to distinct
// (page, offset) slots, and a sub-page that receives its first token (offset % LP == 0) in this batch
// receives its later tokens after it, in this batch or later ones. Then kmin/kmax equal the sequential
// CPU writes: a sub-page whose first token is in the batch is reset to the min/max of its rows in the
// batch, any other sub-page folds its rows into the stored min/max. Rows whose page or offset is out
// of range are skipped (never written out of bounds); the host validates them.
struct KvAppendRows {
  const __nv_bfloat16* k_new = nullptr;
  const __nv_bfloat16* v_new = nullptr;
  int64_t k_stride = 0;
  int64_t v_stride = 0;
  const int32_t* page_ids = nullptr;
  const int32_t* offsets = nullptr;
  const uint8_t* with_metadata = nullptr;
  int64_t rows = 0;
  int32_t heads = 1;  // ≥ 1
};

// Two stream-ordered launches (reset the sub-pages that start in the batch, then write and fold):
// CUDA graph safe.
void kv_append(const KvPoolView& pool, const KvAppendRows& rows, cudaStream_t stream,
               std::source_location loc = std::source_location::current());

}  // namespace sparseserve::kernels::cuda
