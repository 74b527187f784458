// The values one GPU step's device work takes (engine/cuda/cuda_forward.cc: CudaForward::Impl
// builds a DeviceStep on the host, then enqueues from it alone), and the key by which StepGraphs
// tells whether a captured CUDA graph replays it.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cuda/block_sparse.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/sampling.h"

namespace sparseserve {

// Offsets of one kernel's CSR key lists: ip in the step's tables, pg, p0, ln in its lists.
struct ListOffsets {
  size_t ip = 0, pg = 0, p0 = 0, ln = 0;
};

// A layer's page_select inputs: offsets in the tables (pages: in the lists), offsets into the step's
// query offsets and picked blocks, and where the fresh rows' entries start in the decode key lists.
struct SelectOffsets {
  size_t indptr = 0, pages = 0, lens = 0, out_indptr = 0, q_at = 0, picked_at = 0, region = 0;
};

// One page_select call: `rows` fresh rows from row `first` of the layer's, sharing a geometry.
struct SelectRun {
  int64_t first = 0, rows = 0;
  int32_t sink_tokens = 0, token_budget = 0;
};

// What one layer launches, beyond the launches every layer makes.
struct LayerLaunch {
  const kernels::cuda::PrefillAttention* prefill = nullptr;  // planned for this step; nullptr: no prefill rows
  const kernels::cuda::XAttentionSelect* masks = nullptr;    // planned for this step; nullptr: no dynamic rows
  const kernels::cuda::DecodeAttention* decode = nullptr;    // planned for this step; nullptr: no decode rows
  ListOffsets prefill_keys, decode_keys;
  // Lanes that append (step_tables.h LayerPlan): retrieval before the attention, streaming before
  // or after it; each kind's page table, [KV][rows] in the step's tables.
  bool retrieval_before = false, streaming_before = false, streaming_after = false;
  size_t app_r = 0, app_sb = 0, app_s = 0;
  SelectOffsets sel;
  std::vector<SelectRun> select_runs;  // empty: no selection this step
};

// Every value the device work of a step takes (CudaForward::Impl::enqueue reads nothing else that
// changes between steps): equal steps launch the same kernels with the same arguments, so a CUDA
// graph captured for one replays another (StepGraphs). The tables' contents differ; they are
// uploaded before.
struct DeviceStep {
  int64_t rows = 0, out_rows = 0, n_host = 0, n_drawn = 0;
  int32_t* t = nullptr;  // the step's tables; the offsets below index it
  int32_t* lists = nullptr;  // the step's device-filled lists (step_tables.h ListSpace)
  const int32_t* store = nullptr;  // the block tables (BlockStore)
  size_t ids = 0, pos = 0, off = 0, selr = 0, runs = 0;
  int32_t n_runs = 0;
  int32_t max_blocks = 1;  // page_select's bound on a lane's blocks
  __nv_bfloat16 *h = nullptr, *xn = nullptr, *qkv = nullptr, *att = nullptr, *proj = nullptr, *gate_up = nullptr,
       *act = nullptr, *sel = nullptr, *logits = nullptr;
  float* logits_f32 = nullptr;
  const kernels::cuda::SamplingRow* draw_params = nullptr;
  int32_t* draw_tokens = nullptr;
  const int64_t* q_offsets = nullptr;
  int32_t* picked = nullptr;
  float* scores = nullptr;
  uint32_t* row_ready = nullptr;
  float* mask_workspace = nullptr;   // XAttention's, shared by the layers
  uint8_t* block_allowed = nullptr;  // the layer's dynamic block masks (rewritten per layer)
  float* split_workspace = nullptr;  // the prefill's key-split partials, shared by the layers
  int64_t split_floats = 0;
  std::vector<LayerLaunch> layers;

  // shape: what fixes a graph's topology (which launches are made); key: every value (shape
  // included). Values as int64 (addresses too).
  void describe(std::vector<int64_t>& shape, std::vector<int64_t>& key) const;
};


}  // namespace sparseserve
