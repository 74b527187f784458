// Dynamic block sparsity for retrieval heads in prefill (XAttention-style) on the GPU (DESIGN.md
// §5.4). CPU twin and spec: kernels/cpu/block_sparse.h: xattention_block_mass (the estimate from
// strided antidiagonals) and select_blocks (per query block: key block 0, the diagonal block, then
// the highest-mass blocks until the kept share reaches the threshold). The masks it writes are the
// kBlocks rows PrefillAttention reads (PrefillRow::block_offset, first_qblock, n_kblocks).
//
// How a call goes (plan, then run, as the attention families):
//   XAttentionSelect sel(config);
//   sel.plan(rows, stream);     // host: geometry, work items, one upload
//   sel.run(args, stream);      // the caller's workspace and outputs (workspace_floats(), mask_bytes());
//                               // no allocation, no host sync
//   sel.geometry()[i]           // where row i's mask rows are in args.allowed (and its masses in args.mass)
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <source_location>
#include <span>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.h"

namespace sparseserve::kernels::cuda {

// One (sequence, KV head) row: a chunk of queries and the keys before and inside it.
struct BlockMassRow {
  int32_t q_row0 = 0;    // token row of the chunk's first query in q
  int32_t n_tokens = 0;  // T ≥ 1: queries at positions q_pos0 .. q_pos0 + T − 1
  int32_t q_pos0 = 0;
  int32_t kv_head = 0;   // query heads kv_head·group .. kv_head·group + group − 1
  int32_t list_row = 0;  // the row of XAttentionArgs::pages that holds the keys
  int32_t block_tokens = 64;  // B: 16, 32, 64 or 128
  int32_t stride = 8;         // S: a power of two dividing B
  float threshold = 0.9f;     // in (0, 1]

  bool operator==(const BlockMassRow&) const = default;
};

struct XAttentionArgs {
  // q: bf16, token row i, query head h at q + i*q_stride + h*D.
  const __nv_bfloat16* q = nullptr;
  int64_t q_stride = 0;  // elements, multiple of 8
  // Keys: row list_row of `pages` holds positions 0 .. q_pos0 + T − 1 of the row's KV head lane,
  // every block in order from block 0 (page_pos0 = e·P, page_len = P but the last): slot u holds
  // position u.
  PagedKvPool kv;
  KeyPageList pages;
  float scale = 0.0f;  // 1/√D for the CPU twin's estimate
  // Device memory of the caller: the plan's workspace_floats() floats (read and written by the
  // call only: layers may share it), the masks (mask_bytes() bytes, the geometry's offsets) and
  // optionally the masses (mask_bytes() floats; nullptr: not written).
  float* workspace = nullptr;
  uint8_t* allowed = nullptr;
  float* mass = nullptr;
};

// Where a row's outputs are: [n_qblocks][n_kblocks] at offset in allowed() (bytes, 1 = computed)
// and in mass() (floats), query block first_qblock + i at row i (cpu::BlockMask's geometry).
struct BlockMaskGeometry {
  int64_t offset = 0;
  int32_t first_qblock = 0;
  int32_t n_qblocks = 0;
  int32_t n_kblocks = 0;
};

struct XAttentionConfig {
  int32_t head_dim = 128;    // 64 or 128
  int32_t group = 1;         // query heads per KV head, 1..64
  int32_t page_tokens = 64;  // 16, 32, 64 or 128
  // CTAs the estimate aims at most for (longer key ranges per CTA beyond); 0: eight waves (one CTA
  // a multiprocessor). Where its usual ranges fill under an eighth of it, shorter ones, within that
  // eighth. Tests lower it to cover long ranges on small inputs.
  int32_t max_ctas = 0;
};

// Key blocks a row may have at most (the selection sorts a row's blocks in shared memory).
inline constexpr int32_t kMaxMaskKeyBlocks = 16384;

class XAttentionSelect {
 public:
  explicit XAttentionSelect(const XAttentionConfig& config,
                            std::source_location loc = std::source_location::current());
  ~XAttentionSelect();
  XAttentionSelect(const XAttentionSelect&) = delete;
  XAttentionSelect& operator=(const XAttentionSelect&) = delete;

  // Geometry, work items and workspace of rows (host), their upload on `stream`; grows the device
  // plan buffer when needed (then it synchronises the device). If it throws after its argument
  // checks, no plan remains.
  void plan(std::span<const BlockMassRow> rows, cudaStream_t stream = nullptr,
            std::source_location loc = std::source_location::current());

  // Writes every planned row's masses and mask rows; allocates nothing, does not synchronise.
  void run(const XAttentionArgs& args, cudaStream_t stream = nullptr,
           std::source_location loc = std::source_location::current()) const;

  const std::vector<BlockMaskGeometry>& geometry() const { return geometry_; }
  int64_t mask_bytes() const { return mask_bytes_; }              // of the plan's masks
  int64_t workspace_floats() const { return workspace_floats_; }  // the plan's workspace

  // The most workspace_floats() and mask_bytes() of any plan (this group) of at most `rows` rows of
  // block_tokens B and stride S whose n_tokens add up to at most `tokens`, each ending at or before
  // position max_len: what a caller reserves before knowing its rows (the engine's step memory).
  // Host arithmetic; needs no device. B and S must be valid (plan's checks).
  static int64_t workspace_floats_bound(int32_t group, int32_t block_tokens, int32_t stride, int64_t rows,
                                        int64_t tokens, int64_t max_len);
  static int64_t mask_bytes_bound(int32_t block_tokens, int64_t rows, int64_t tokens, int64_t max_len);

 private:
  XAttentionConfig config_;
  DeviceBuffer<int32_t> plan_dev_;   // rows, then the two kernels' work items
  PinnedBuffer<int32_t> plan_host_;  // staging copy
  CudaEvent plan_uploaded_;
  std::vector<BlockMaskGeometry> geometry_;
  int32_t planned_rows_ = -1;  // −1: no plan
  int32_t bins_items_ = 0, select_items_ = 0;
  int32_t max_kblocks_ = 0;
  int32_t max_ctas_ = 0;
  int64_t mask_bytes_ = 0;
  int64_t workspace_floats_ = 0;  // per (row group, head): tile sums, tile maxima, max and sum
};

}  // namespace sparseserve::kernels::cuda
