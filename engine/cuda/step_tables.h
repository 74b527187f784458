// The host half of a CudaForward step (plan, then run; engine/cuda/cuda_forward.h): the step's
// int32 tables, packed into one blob that is uploaded in one copy, and per layer the attention's rows
// and CSR key lists and page_select's inputs. Plain host code over the KV cache manager's page lists
// and each sequence's attention state (engine/sequence_attention.h); what it computes is DESIGN.md
// §5's key set of every (sequence, layer, KV head) lane.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/kv_backend.h"
#include "engine/model_config.h"
#include "engine/sequence_attention.h"
#include "engine/step_runner.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/prefill_attention.h"
#include "kvcache/kv_cache_manager.h"

namespace sparseserve {

// Room a table of n entries takes in the step's blob: n rounded up to a power of two (at least 16),
// so that tables whose lengths grow by a page now and then (key lists as contexts grow) keep their
// offsets for many steps, and so does the CUDA graph of the steps (StepGraphs: offsets are part of
// a step's key).
inline size_t table_room(size_t n) { return std::bit_ceil(std::max<size_t>(n, 16)); }

// The step's int32 tables, packed into one upload; each table is an offset into `data`.
struct Blob {
  std::vector<int32_t> data;
  size_t take(size_t n) {
    const size_t at = data.size();
    data.resize(at + table_room(n));
    return at;
  }
  size_t append(std::span<const int32_t> v) {
    const size_t at = take(v.size());
    std::copy(v.begin(), v.end(), data.begin() + static_cast<std::ptrdiff_t>(at));
    return at;
  }
};

// Key lists of one kernel's rows (decode_attention.h KeyPageList) and their Blob offsets.
struct KeyLists {
  std::vector<int32_t> indptr{0}, pages, pos0, len;
  size_t ip = 0, pg = 0, p0 = 0, ln = 0;
  void add(int32_t page, int64_t first, int64_t count) {
    pages.push_back(page);
    pos0.push_back(static_cast<int32_t>(first));
    len.push_back(static_cast<int32_t>(count));
  }
  int32_t close_row() {  // the row's entry count
    indptr.push_back(static_cast<int32_t>(pages.size()));
    return indptr.back() - indptr[indptr.size() - 2];
  }
  void reserve_row(int32_t count) {  // entries a kernel writes (page_select)
    pages.resize(pages.size() + static_cast<size_t>(count));
    pos0.resize(pages.size());
    len.resize(pages.size());
    close_row();
  }
  void upload_to(Blob& blob) {
    ip = blob.append(indptr);
    pg = blob.append(pages);
    p0 = blob.append(pos0);
    ln = blob.append(len);
  }
};

// One layer's attention rows and key lists, built on the host: chunks of more than one token go to
// the prefill kernel, one-token rows (decode steps) to the split-KV decode kernel. Decode rows whose
// selection is computed on the device come last (`fresh_from`): their entries are reserved, and
// page_select fills them.
struct LayerPlan {
  std::vector<kernels::cuda::PrefillRow> prefill_rows;
  KeyLists prefill_keys;
  std::vector<kernels::cuda::DecodeRow> decode_rows;
  std::vector<int32_t> decode_entries;  // each decode row's entry count (its plan's hint)
  KeyLists decode_keys;
  size_t fresh_from = 0;  // decode_rows[fresh_from ..] select on the device
  bool streaming_before = false, streaming_after = false;  // streaming lanes append before / after
  // The fresh rows' page_select inputs: all blocks of their lane, their lengths, the selection's
  // CSR (plan_selected_indptr), query offsets in the qkv buffer, and (for the stats) the
  // (sequence, layer head) each belongs to.
  std::vector<kernels::cuda::DecodeRow> fresh_rows;  // their decode rows and entry counts, in sel_owner's order
  std::vector<int32_t> fresh_entries;
  std::vector<int32_t> sel_indptr{0}, sel_pages, sel_lens, sel_out_indptr{0};
  std::vector<int64_t> sel_q;
  std::vector<std::pair<uint64_t, int32_t>> sel_owner;
  size_t s_ip = 0, s_pg = 0, s_len = 0, s_out = 0;  // Blob offsets
  size_t q_at = 0, picked_at = 0;  // offsets into the step's q offsets and picked blocks
  // The layer's share of the step's figures: decode context and host-listed selected tokens
  // (SelectionStats), and the most blocks of a lane that page_select reads.
  int64_t context_tokens = 0, selected_tokens = 0;
  int32_t max_blocks = 1;
};

// The step's tables. Blob layout (int32; offsets into blob.data):
//   ids, pos, off [rows]: token, position, slot within its page;  selr [out_rows]: the token row of
//   each logits row, the host's rows first, then the drawn ones (draws' order);
//   app_r, app_sb, app_s [L][KV][rows]: the page each token's K/V goes to in retrieval lanes
//   (before the attention) and streaming lanes (one-token rows before it: their decode row reads
//   the new key from the ring; longer chunks after it), −1 for none (kv_append skips the row);
//   per layer: the attention's CSR lists and page_select's inputs (LayerPlan's offsets).
struct StepTables {
  Blob blob;
  size_t ids = 0, pos = 0, off = 0, selr = 0, app_r = 0, app_sb = 0, app_s = 0;
  std::vector<LayerPlan> plans;  // [L]
  std::vector<int64_t> step_q;   // all layers' selection query offsets (LayerPlan::q_at)
  int64_t picked_total = 0;      // blocks page_select picks in all layers (LayerPlan::picked_at)
  int32_t max_blocks = 1;        // the most blocks of a lane page_select reads
  int64_t context_tokens = 0, selected_tokens = 0;  // SelectionStats' share of the host-listed rows
};

// Builds the tables of a checked step (rows, out_rows: check_step's). Every sequence is bound in
// `seqs` and holds its step's pages in `manager`. decode_with_prefill: one-token rows go to the
// prefill kernel too. Large steps build their layers in parallel (OpenMP).
StepTables build_step_tables(const ModelConfig& c, const kvcache::KvCacheManager& manager,
                             const std::unordered_map<uint64_t, SequenceAttention>& seqs,
                             std::span<const ForwardSeq> batch, std::span<const DeviceDraw> draws, int64_t rows,
                             int64_t out_rows, bool decode_with_prefill);

}  // namespace sparseserve
