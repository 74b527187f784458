// Paged prefill attention on the GPU (DESIGN.md §5, §8): one launch for all heads of a layer and a
// varlen batch of query chunks, a mask per (sequence, KV head) row: dense causal, streaming band
// (sink + local) or block mask rows. Keys come from the paged cache through the same CSR page lists
// as decode (decode_attention.h), optionally followed by the chunk's own K/V from the step's
// contiguous buffer (streaming heads attend the ring's old content plus the chunk, DESIGN.md §4),
// so chunked prefill needs nothing else. CPU twins: kernels/cpu/span_attention.h (attend_spans,
// the per-query rule) and kernels/cpu/attention_block.h.
//
// Key tiles outside a row's band or block mask are skipped whole; masks are exact at the edges.
// Plan (host: tiles, ordered longest first; when they fill under a wave of CTAs, or a last wave
// part-filled would cost more than pieces over more waves, tiles split along their keys,
// attention_plan.h plan_prefill_split), then run (no
// allocation, no host sync; a split's pieces write fp32 partials to the caller's workspace and a
// second kernel merges them).
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

struct PrefillArgs {
  // q: bf16, token row i, query head h at q + i*q_stride + h*D; o likewise (bf16).
  const __nv_bfloat16* q = nullptr;
  int64_t q_stride = 0;  // elements, multiple of 8
  __nv_bfloat16* o = nullptr;
  int64_t o_stride = 0;
  // The chunk's own K/V (rows with new_kv): token row i, KV head h at k_new + i*kv_new_stride + h*D,
  // so kv_new_stride ≥ (largest such h + 1)·D. May be null when no row sets new_kv.
  const __nv_bfloat16* k_new = nullptr;
  const __nv_bfloat16* v_new = nullptr;
  int64_t kv_new_stride = 0;
  PagedKvPool kv;
  KeyPageList pages;  // one row per PrefillRow of the plan, same order
  const uint8_t* block_allowed = nullptr;  // kBlocks rows (device), see PrefillRow
  float scale = 0.0f;                      // softmax scale (usually 1/√D)
  // Device scratch of at least PrefillAttention::workspace_floats() floats, 16-byte aligned, for the
  // partial results of a key split; unused (may be null) when the plan splits nothing. Layers that
  // run one after another on a stream may share it.
  float* workspace = nullptr;
  int64_t workspace_floats = 0;
};

// Which kernel computes the attention. kAuto: kWgmma on compute capability 9.0 (H100/H200, built
// for sm_90a), kMmaSync elsewhere. Both compute the same function (tests compare them).
enum class PrefillKernel : int32_t {
  kAuto = 0,
  kMmaSync = 1,  // FlashAttention-2 style, mma.sync m16n8k16 (prefill_attention.cu)
  kWgmma = 2,    // Hopper warpgroup MMA (prefill_attention_sm90.cu); sm_90a only
};

struct PrefillConfig {
  int32_t head_dim = 128;    // 64 or 128
  int32_t group = 1;         // query heads per KV head, 1..64
  int32_t page_tokens = 64;  // 16, 32, 64 or 128
  // false: visit every key tile and mask every element (the dense kernel under the expanded mask;
  // tests compare it with the skipping run, which must give identical bits).
  bool skip_tiles = true;
  PrefillKernel kernel = PrefillKernel::kAuto;
  // The key split of tiles that fill under a wave, or one to four waves unevenly (plan_prefill_split,
  // attention_plan.h): pieces of at least this many keys (≤ 0: never split); a wave is split_ctas
  // CTAs (0: this device's resident CTAs for the resolved kernel).
  int32_t min_split_keys = 1024;
  int32_t split_ctas = 0;
};

class PrefillAttention {
 public:
  explicit PrefillAttention(const PrefillConfig& config,
                            std::source_location loc = std::source_location::current());
  ~PrefillAttention();
  PrefillAttention(const PrefillAttention&) = delete;
  PrefillAttention& operator=(const PrefillAttention&) = delete;

  // Tiles for rows (host) and their upload on `stream`; grows the device workspace when needed
  // (then it synchronises the device). run() must come after it in stream order (the same stream, or
  // behind an event recorded there). If it throws after its argument checks, no plan remains.
  void plan(std::span<const PrefillRow> rows, cudaStream_t stream = nullptr,
            std::source_location loc = std::source_location::current());

  // Writes o for every planned (token, head); allocates nothing, does not synchronise. With a key
  // split, a second kernel merges the pieces (through args.workspace), launched programmatically.
  // Both kernels let a programmatic successor in early (launch.cuh): a kernel the caller launches
  // programmatically after run() may start before o is written, and must wait (pdl_wait) to read it.
  void run(const PrefillArgs& args, cudaStream_t stream = nullptr,
           std::source_location loc = std::source_location::current()) const;

  // Floats of PrefillArgs::workspace the plan needs (0: it splits nothing).
  int64_t workspace_floats() const;

  const std::vector<PrefillWorkItem>& work() const { return work_; }
  const std::vector<PrefillMergeItem>& merges() const { return merge_; }
  const PrefillConfig& config() const { return config_; }
  PrefillKernel kernel() const { return kernel_; }  // the resolved choice (never kAuto)

 private:
  PrefillConfig config_;
  PrefillKernel kernel_ = PrefillKernel::kMmaSync;
  int32_t split_ctas_ = 0;  // the resolved PrefillConfig::split_ctas
  // Device plan blob (int32): [0..4) {work items, rows, merge items, 0}; work [n][6]; merge [n_merge][4];
  // rows [n_rows][14].
  DeviceBuffer<int32_t> plan_dev_;
  PinnedBuffer<int32_t> plan_host_;  // staging copy of the blob
  CudaEvent plan_uploaded_;          // the last upload from plan_host_
  std::vector<PrefillWorkItem> work_;
  std::vector<PrefillMergeItem> merge_;
  int32_t num_partials_ = 0;
  // What run() checks its arguments against (planned_rows_ −1: no plan, never planned or the last
  // plan() threw after its argument checks).
  struct Planned {
    int32_t rows = -1;
    bool new_kv = false, blocks = false;
    int32_t min_block = INT32_MAX;  // the smallest block_tokens of a kBlocks row (the Hopper kernel's walk)
    int64_t new_rows = 0;      // rows of k_new / v_new the plan reads
    int32_t new_kv_heads = 0;  // 1 + the largest kv_head of a new_kv row
  } planned_;
};

}  // namespace sparseserve::kernels::cuda
