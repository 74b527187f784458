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
#include "engine/cuda/block_store.h"
#include "kernels/cpu/page_lists.h"
#include "kernels/cuda/block_sparse.h"
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

// The step's device-filled lists (kernels/cpu/page_lists.h): regions handed out like Blob's
// tables (padded the same way, so they keep their offsets), never uploaded; expand_key_runs and
// page_select write them on the device.
struct ListSpace {
  size_t size = 0;
  size_t take(size_t n) {
    const size_t at = size;
    size += table_room(n);
    return at;
  }
};

// Key lists of one kernel's rows (decode_attention.h KeyPageList): indptr in the step's Blob, the
// entries in its ListSpace, filled on the device from runs: store runs for rows that read every
// block of a lane (in BlockStore's device store), staged runs for the rows the host lists (sink and
// ring pages, previous selections: staged in the Blob), nothing for rows page_select fills.
struct KeyLists {
  using KeyRun = kernels::cpu::KeyRun;
  std::vector<int32_t> indptr{0};
  std::vector<int32_t> pages, pos0, len;  // the staged entries, rows in order
  std::vector<KeyRun> runs;               // pages_at: entry index; staged src: index into pages
  int32_t entries = 0;
  size_t ip = 0, pg = 0, p0 = 0, ln = 0;  // ip: Blob offset; pg, p0, ln: ListSpace offsets
  void reset() {  // empty, keeping the vectors' capacity (StepTables::reset)
    indptr.assign(1, 0);
    pages.clear(), pos0.clear(), len.clear(), runs.clear();
    entries = 0;
    ip = pg = p0 = ln = 0;
  }
  // A staged entry of the open row.
  void add(int32_t page, int64_t first, int64_t count) {
    const auto staged = static_cast<int32_t>(pages.size());
    if (runs.empty() || runs.back().src_step == 0 || runs.back().pages_at + runs.back().count != entries) {
      runs.push_back(KeyRun{.count = 0, .src = staged, .src_step = 1, .pages_at = entries});
    }
    ++runs.back().count;
    ++entries;
    pages.push_back(page);
    pos0.push_back(static_cast<int32_t>(first));
    len.push_back(static_cast<int32_t>(count));
  }
  // Entries of the open row for blocks first .. first + blocks − 1 of the block table at `table` in
  // the store, the row's keys being the positions < end.
  void add_blocks(int32_t table, int32_t first, int32_t blocks, int64_t end) {
    if (blocks <= 0) return;
    runs.push_back(KeyRun{.count = blocks, .src = table, .src_step = 0, .first = first,
                          .end = static_cast<int32_t>(end), .pages_at = entries});
    entries += blocks;
  }
  int32_t close_row() {  // the row's entry count
    indptr.push_back(entries);
    return indptr.back() - indptr[indptr.size() - 2];
  }
  void reserve_row(int32_t count) {  // entries a kernel writes (page_select)
    entries += count;
    close_row();
  }
  // Places indptr and the staged entries in the Blob and the entries in `lists`, and appends the
  // runs, their offsets made absolute, to `step_runs`.
  void place(Blob& blob, ListSpace& lists, std::vector<KeyRun>& step_runs) {
    ip = blob.append(indptr);
    const auto n = static_cast<size_t>(entries);
    pg = lists.take(n);
    p0 = lists.take(n);
    ln = lists.take(n);
    const size_t s_pg = blob.append(pages), s_p0 = blob.append(pos0);
    blob.append(len);  // at s_p0 + (s_p0 - s_pg): the same room
    for (KeyRun r : runs) {
      const int32_t at = r.pages_at;
      r.pages_at = static_cast<int32_t>(pg) + at;
      r.pos0_at = static_cast<int32_t>(p0) + at;
      r.len_at = static_cast<int32_t>(ln) + at;
      if (r.src_step != 0) {
        r.src += static_cast<int32_t>(s_pg);
        r.src_step = static_cast<int32_t>(s_p0 - s_pg);
      }
      step_runs.push_back(r);
    }
  }
};

// One layer's attention rows and key lists, built on the host: chunks of more than one token go to
// the prefill kernel, one-token rows (decode steps) to the split-KV decode kernel. Decode rows whose
// selection is computed on the device come last (`fresh_from`): their entries are reserved, and
// page_select fills them.
struct LayerPlan {
  std::vector<kernels::cuda::PrefillRow> prefill_rows;
  KeyLists prefill_keys;
  // Dynamic prefill sparsity (XAttention, kernels/cuda/block_sparse.h): one row per retrieval chunk
  // whose block mask the device estimates; its list_row is its row in prefill_rows (kBlocks, the mask
  // geometry filled in once the estimate is planned) and in prefill_keys (every block of the lane).
  std::vector<kernels::cuda::BlockMassRow> mass_rows;
  std::vector<kernels::cuda::DecodeRow> decode_rows;
  std::vector<int32_t> decode_entries;  // each decode row's entry count (its plan's hint)
  KeyLists decode_keys;
  size_t fresh_from = 0;  // decode_rows[fresh_from ..] select on the device
  // Lanes that append the step's K/V: retrieval lanes before the attention, streaming lanes before
  // it (one-token rows: their decode row reads the new key from the ring) or after it (longer
  // chunks). Each kind present has its table in the Blob, [KV][rows] int32 at app_r, app_sb,
  // app_s: the page each row's K/V goes to in head h's lane of that kind, −1 for none (kv_append
  // skips the row); a kind absent has no table (its offset 0).
  bool retrieval_before = false, streaming_before = false, streaming_after = false;
  size_t app_r = 0, app_sb = 0, app_s = 0;
  // The fresh rows' page_select inputs: all blocks of their lane (CSR sel_indptr over page ids in
  // the ListSpace at s_pg, filled by store runs), their lengths, the selection's CSR
  // (plan_selected_indptr), query offsets in the qkv buffer, and (for the stats) the (sequence,
  // layer head) each belongs to.
  std::vector<kernels::cuda::DecodeRow> fresh_rows;  // their decode rows and entry counts, in sel_owner's order
  std::vector<int32_t> fresh_entries;
  std::vector<int32_t> sel_indptr{0}, sel_lens, sel_out_indptr{0};
  std::vector<kernels::cpu::KeyRun> sel_runs;  // pages_at: index in the lane lists (pages only)
  std::vector<int64_t> sel_q;
  std::vector<std::pair<uint64_t, int32_t>> sel_owner;
  size_t s_ip = 0, s_len = 0, s_out = 0;  // Blob offsets
  size_t s_pg = 0;                         // ListSpace offset
  size_t q_at = 0, picked_at = 0;  // offsets into the step's q offsets and picked blocks
  // The layer's share of the step's figures: decode context and host-listed selected tokens
  // (SelectionStats), and the most blocks of a lane that page_select reads.
  int64_t context_tokens = 0, selected_tokens = 0;
  int32_t max_blocks = 1;
  void reset() {  // every field as constructed, keeping the vectors' capacity (StepTables::reset)
    prefill_rows.clear(), mass_rows.clear(), decode_rows.clear(), decode_entries.clear();
    fresh_rows.clear(), fresh_entries.clear();
    prefill_keys.reset(), decode_keys.reset();
    fresh_from = 0;
    retrieval_before = streaming_before = streaming_after = false;
    app_r = app_sb = app_s = 0;
    sel_indptr.assign(1, 0), sel_out_indptr.assign(1, 0);
    sel_lens.clear(), sel_runs.clear(), sel_q.clear(), sel_owner.clear();
    s_ip = s_len = s_out = s_pg = q_at = picked_at = 0;
    context_tokens = selected_tokens = 0;
    max_blocks = 1;
  }
};

// The step's tables. Blob layout (int32; offsets into blob.data):
//   ids, pos, off [rows]: token, position, slot within its page;  selr [out_rows]: the token row of
//   each logits row, the host's rows first, then the drawn ones (draws' order);
//   per layer, the append tables of the kinds of lanes it has (LayerPlan::app_r, app_sb, app_s:
//   [KV][rows] each), then per layer the attention's CSR lists and page_select's inputs
//   (LayerPlan's offsets: indptr and staged entries in the Blob, the entries themselves in the
//   ListSpace);
//   runs [n_runs]: the KeyRuns (8 int32 each) that fill the ListSpace, every layer's, last.
// The Blob is uploaded; the ListSpace is device memory of lists.size int32 that expand_key_runs (at
// the step's start) and page_select fill.
struct StepTables {
  Blob blob;
  ListSpace lists;
  size_t ids = 0, pos = 0, off = 0, selr = 0;
  size_t runs = 0;
  int32_t n_runs = 0;
  std::vector<LayerPlan> plans;  // [L]
  std::vector<int64_t> step_q;   // all layers' selection query offsets (LayerPlan::q_at)
  int64_t picked_total = 0;      // blocks page_select picks in all layers (LayerPlan::picked_at)
  int32_t max_blocks = 1;        // the most blocks of a lane page_select reads
  int64_t context_tokens = 0, selected_tokens = 0;  // SelectionStats' share of the host-listed rows
  std::vector<kernels::cpu::KeyRun> all_runs;  // scratch: the runs before they go to the Blob
  // Every field as constructed, with plans for n_layers, keeping the vectors' capacity: a step's
  // tables are rebuilt every step, and fresh allocations of their size (a megabyte at batch 64) cost
  // more in page faults than the build itself.
  void reset(size_t n_layers) {
    blob.data.clear();
    lists = {};
    ids = pos = off = selr = runs = 0;
    n_runs = 0;
    plans.resize(n_layers);
    for (LayerPlan& lp : plans) lp.reset();
    step_q.clear(), all_runs.clear();
    picked_total = 0;
    max_blocks = 1;
    context_tokens = selected_tokens = 0;
  }
};

// Builds the tables of a checked step (rows, out_rows: check_step's). Every sequence is bound in
// `seqs` and in `store`, holds its step's pages in `manager`, and its block tables are synced to
// the store (BlockStore::pending, then stored). decode_with_prefill: one-token rows go to the
// prefill kernel too. Large steps build their layers in parallel (OpenMP). Into `tab`, reset first
// (its capacity reused: keep one StepTables across steps).
void build_step_tables(const ModelConfig& c, const kvcache::KvCacheManager& manager, const BlockStore& store,
                       const std::unordered_map<uint64_t, SequenceAttention>& seqs, std::span<const ForwardSeq> batch,
                       std::span<const DeviceDraw> draws, int64_t rows, int64_t out_rows, bool decode_with_prefill,
                       StepTables& tab);

}  // namespace sparseserve
