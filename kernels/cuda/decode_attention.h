// Paged decode attention on the GPU (DESIGN.md §5, §8): one query token per (sequence, KV head)
// row, all query heads of the row's GQA group at once, keys from a CSR list of pages, split-KV over
// CTAs with a log-sum-exp merge. CPU twin: kernels/cpu/span_attention.h (attend_spans).
//
// This header also holds the types both attention families share (the page pool, the CSR key page
// list, the mask kinds); prefill_attention.h includes it. Host code only: no device code here.
//
// How a call goes (flashinfer's plan/run):
//   DecodeAttention attn(config);                 // once: workspace sized for config.max_rows
//   attn.plan(rows, row_pages, stream);           // per step, on the host: work split, one upload
//   attn.run(args, stream);                       // no allocation, no host sync: graph-capturable
// With config.cuda_graph the run launches fixed grids (the capacity), so a graph captured once stays
// valid for every later plan; only the device buffers it reads change.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <source_location>
#include <span>
#include <vector>

#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/cuda_check.h"

namespace sparseserve::kernels::cuda {

// ---- Shared by decode and prefill -------------------------------------------------------------

// The K/V page pool (kvcache/README.md): one page = page_tokens tokens of one (layer, KV head) lane.
// k: [num_pages][page_tokens][head_dim] bf16 row-major, v likewise; both 16-byte aligned. Every slot
// holds a finite value (zero the pool when allocating it): the Hopper prefill kernel copies whole
// pages by TMA and masks the slots past a page's length, which must not be NaN or Inf.
struct PagedKvPool {
  const __nv_bfloat16* k = nullptr;
  const __nv_bfloat16* v = nullptr;
  int64_t num_pages = 0;    // ≥ 1; every listed page id is below it (the Hopper prefill's TMA bounds)
  int32_t page_tokens = 0;  // P: 16, 32, 64 or 128
  int32_t head_dim = 0;     // D: 64 or 128
};

// Keys of each row as a CSR list of pages (device arrays, int32). Row r's pages are list entries
// indptr[r] .. indptr[r+1]-1; entry i is pool page page_ids[i], whose slots 0 .. page_len[i]-1 hold
// the keys at positions page_pos0[i] .. page_pos0[i] + page_len[i] - 1 (slots past page_len are
// never read). Contract (all kvcache tables satisfy it): 1 ≤ page_len ≤ P, and a row's entries are
// in ascending position order without overlap (page_pos0[i+1] ≥ page_pos0[i] + page_len[i]).
// This one format covers retrieval rows (all blocks in order), selected pages (ascending subset) and
// streaming rows (sink pages, then ring pages oldest first: positions are given, so a wrapped ring
// needs no special code).
struct KeyPageList {
  const int32_t* indptr = nullptr;     // [rows + 1]
  const int32_t* page_ids = nullptr;   // [indptr[rows]]
  const int32_t* page_pos0 = nullptr;  // [indptr[rows]]
  const int32_t* page_len = nullptr;   // [indptr[rows]]
};

// ---- Decode ----------------------------------------------------------------------------------

// One (sequence, KV head) row of a decode call (host struct, uploaded by plan).
struct DecodeRow {
  int32_t q_row = 0;    // token row of the query in q / o
  int32_t kv_head = 0;  // query heads kv_head*group .. kv_head*group + group - 1 read this row's keys
  int32_t q_pos = 0;    // query position t
  MaskKind mask = MaskKind::kCausal;  // kCausal or kBand
  int32_t sink = 0;     // kBand only
  int32_t local = 0;    // kBand only
  // The row's list entries (page_ids, page_pos0, page_len) are plan-time data too, and so are the K/V
  // rows of its entries but the last: no kernel that may still be running when run() starts writes
  // them. True for lists the host keeps (dense retrieval rows, streaming rows' sink + ring) in a
  // decode step whose append writes each row's newest key only, into its last entry; not for lists
  // page_select builds in the same stream. When the launch is programmatic (launch_programmatic())
  // the row's pieces then copy their first K/V tiles before the row's last entry while the previous
  // kernel finishes.
  bool pages_plan_time = false;
  bool operator==(const DecodeRow&) const = default;
};
static_assert(sizeof(DecodeRow) == 28);  // the plan blob holds rows as 7 int32 each

struct DecodeArgs {
  // q: bf16, token row i, query head h at q + i*q_stride + h*D; o likewise with o_stride (bf16).
  const __nv_bfloat16* q = nullptr;
  int64_t q_stride = 0;  // elements, multiple of 8
  __nv_bfloat16* o = nullptr;
  int64_t o_stride = 0;  // elements, multiple of 8
  PagedKvPool kv;
  // One row per DecodeRow of the plan, same order. pages.indptr is plan-time data: with
  // config.programmatic_launch it is read before waiting for the previous kernel, so no kernel that
  // may still be running when run() starts may write it (launch.cuh; copies from the host, and
  // page_select's selected_indptr, are fine). The entries may be the previous kernel's output,
  // except for rows marked DecodeRow::pages_plan_time.
  KeyPageList pages;
  float scale = 0.0f;  // softmax scale (usually 1/√D)
};

// Positions of page lists given as block indices (page_select.h's selected_blocks): for each row
// r < rows and list entry e in indptr[r] .. indptr[r+1]: page_pos0[e] = blocks[e] · P and
// page_len[e] = min(P, seq_lens[r] − blocks[e] · P). Device arrays; one launch (one CTA per row),
// no host sync: capturable in the same graph as page_select and DecodeAttention::run.
void fill_block_positions(const int32_t* indptr, const int32_t* blocks, const int32_t* seq_lens, int32_t rows,
                          int32_t page_tokens, int32_t* page_pos0, int32_t* page_len, cudaStream_t stream = nullptr,
                          std::source_location loc = std::source_location::current());

// DecodeConfig::programmatic_launch: the longest piece of a clustered plan launched programmatically
// (H200: batch 16, 16K tokens, 4 MiB a piece, +0.4% with it; 20K, 5 MiB, -0.3%).
inline constexpr int64_t kProgrammaticClusterMaxPieceBytes = int64_t{4} << 20;

struct DecodeConfig {
  int32_t head_dim = 128;       // 64 or 128
  int32_t group = 1;            // query heads per KV head, 1..16
  int32_t page_tokens = 64;     // 16, 32, 64 or 128
  int32_t max_rows = 0;         // rows per call at most (sizes the workspace)
  bool cuda_graph = false;      // launch capacity-sized grids (surplus CTAs exit at once)
  int32_t min_chunk_tokens = 128;  // smallest piece (tests lower it to exercise the merge)
  int32_t target_ctas = 0;      // pieces to aim for, 0..640; 0: the CTAs resident at once (at most 640)
  // Programmatic dependent launch (sm_90): run() may start while the stream's previous kernel is
  // still running, reading its plan and pages.indptr; it waits for that kernel before touching
  // anything else. Used for every plan except clustered ones (see cluster_ctas) whose longest piece
  // reads more than kProgrammaticClusterMaxPieceBytes of K/V: such a grid launched programmatically
  // read 1-1.4% slower (H200, batch 16, 20K-256K tokens, two machines; likely because its clusters
  // are then placed as the previous kernel's CTAs leave, not on an idle GPU), more than the launch
  // overlap saves; a grid without clusters or with short pieces gains from it (batch 1, 8K: +30%).
  // A CUDA graph keeps the launch mode of the plan it was captured with (correct for any later plan).
  bool programmatic_launch = true;
  // Thread block clusters (sm_90): a plan whose rows have at most this many pieces each (1, 2, 4 or 8;
  // 1: never) launches in clusters of this many CTAs. The pieces of a row that share a cluster then
  // combine through distributed shared memory, and a row inside one cluster skips the global merge
  // (its partials and the count). Plans with longer rows launch without clusters: there combining
  // through distributed shared memory first cost more than the shorter global merge saved (H200,
  // batch 1, 33 pieces a row, clusters of two: +1.1 us a call), and a CUDA graph keeps the cluster
  // size of the plan it was captured on (correct for any later plan, at that cost for long rows).
  // The default target_ctas is the clusters resident at once times this (at 2: every CTA slot); a
  // device where no cluster fits resident launches without clusters.
  int32_t cluster_ctas = 2;
};

class DecodeAttention {
 public:
  explicit DecodeAttention(const DecodeConfig& config,
                           std::source_location loc = std::source_location::current());
  ~DecodeAttention();
  DecodeAttention(const DecodeAttention&) = delete;
  DecodeAttention& operator=(const DecodeAttention&) = delete;

  // Computes the work split for rows (host) and uploads rows + split on `stream`. row_pages: see
  // plan_decode_split. Waits (host) only for the previous plan's upload to have left the staging
  // buffer. Not capturable; call it before replaying a graph that contains run(). run() (or the
  // graph) must come after it in stream order: on the same stream, or behind an event recorded there
  // after plan(). If it throws after its argument checks, no plan remains (run() throws until the
  // next plan() succeeds).
  void plan(std::span<const DecodeRow> rows, std::span<const int32_t> row_pages, cudaStream_t stream = nullptr,
            std::source_location loc = std::source_location::current());

  // Attention for the planned rows: o rows of the planned (q_row, heads) are written, nothing else.
  // Capturable; allocates nothing; does not synchronise.
  void run(const DecodeArgs& args, cudaStream_t stream = nullptr,
           std::source_location loc = std::source_location::current()) const;

  // Device memory a DecodeAttention of `config` allocates (plan blob, partials, row counts) on any
  // device: its work capacity counted at the largest target_ctas when config leaves it to the device.
  // Host arithmetic; needs no device.
  static size_t device_bytes_bound(const DecodeConfig& config);

  const DecodeSplit& split() const { return split_; }
  int32_t work_capacity() const { return work_capacity_; }
  int32_t launch_cluster() const { return launch_cluster_; }  // CTAs per cluster of the planned launch
  bool launch_programmatic() const { return launch_programmatic_; }  // the planned launch's mode
  const DecodeConfig& config() const { return config_; }

 private:
  DecodeConfig config_;
  int32_t target_ctas_ = 0;
  int32_t cluster_ = 1;         // config.cluster_ctas (1 before sm_90)
  int32_t launch_cluster_ = 1;  // CTAs per cluster of the planned launch: cluster_ or 1
  bool launch_programmatic_ = false;  // the planned launch is programmatic (DecodeConfig::programmatic_launch)
  int32_t work_capacity_ = 0;  // a multiple of cluster_
  // Device plan blob (int32): [0..4) counts {work items, rows}; work [capacity][4];
  // row_split [max_rows][2] {pieces, first partial}; rows [max_rows][7].
  DeviceBuffer<int32_t> plan_dev_;
  PinnedBuffer<int32_t> plan_host_;  // staging copy of the blob
  CudaEvent plan_uploaded_;          // the last upload from plan_host_
  DeviceBuffer<float> partial_o_;    // [capacity][group][D]
  DeviceBuffer<float> partial_lse_;  // [capacity][group], log2 domain
  DeviceBuffer<int32_t> row_done_;   // [max_rows] finished pieces per split row, 0 between launches
  DecodeSplit split_;
  int32_t planned_rows_ = -1;  // −1: no plan (never planned, or the last plan() threw)
};

}  // namespace sparseserve::kernels::cuda
