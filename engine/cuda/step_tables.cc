#include "engine/cuda/step_tables.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <exception>
#include <limits>

#include "common/errors.h"
#include "engine/forward_step.h"
#include "kernels/cuda/page_select_plan.h"

namespace sparseserve {

namespace cuda = kernels::cuda;

void build_step_tables(const ModelConfig& c, const kvcache::KvCacheManager& manager, const BlockStore& store,
                       const std::unordered_map<uint64_t, SequenceAttention>& seqs, std::span<const ForwardSeq> batch,
                       std::span<const DeviceDraw> draws, int64_t rows, int64_t out_rows, bool decode_with_prefill,
                       StepTables& tab) {
  using kvcache::HeadRole;
  const int64_t D = c.head_dim, L = c.n_layers, KV = c.n_kv_heads, group = c.n_heads / KV;
  const int64_t qkv_w = (c.n_heads + 2 * KV) * D;
  const int32_t P = manager.config().page_tokens, LP = manager.config().logical_page_tokens;
  tab.reset(static_cast<size_t>(L));
  Blob& blob = tab.blob;
  const auto R = static_cast<size_t>(rows);
  const size_t ids = tab.ids = blob.take(R), pos = tab.pos = blob.take(R), off = tab.off = blob.take(R);
  const size_t selr = tab.selr = blob.take(static_cast<size_t>(out_rows));
  std::vector<LayerPlan>& plans = tab.plans;
  std::vector<int32_t> logit_rows;  // the token row of each logits row, batch order
  // Per sequence: token rows, and the rows that need logits.
  // Looked up once here, read by every layer below.
  std::vector<int64_t> row0(batch.size());
  std::vector<const kvcache::SequenceKv*> kvs(batch.size());
  std::vector<const SequenceAttention*> states(batch.size());
  std::vector<int32_t> region(batch.size());  // the store's block tables of the sequence
  const int32_t lane_blocks = store.blocks_per_lane();
  int64_t r_next = 0;
  for (size_t bi = 0; bi < batch.size(); ++bi) {
    const ForwardSeq& s = batch[bi];
    const auto n = static_cast<int64_t>(s.tokens.size());
    const int64_t r = row0[bi] = r_next;
    kvs[bi] = &manager.sequence(s.id);
    states[bi] = &seqs.at(s.id);
    region[bi] = store.region(s.id);
    for (int64_t i = 0; i < n; ++i) {
      blob.data[ids + static_cast<size_t>(r + i)] = s.tokens[static_cast<size_t>(i)];
      blob.data[pos + static_cast<size_t>(r + i)] = static_cast<int32_t>(s.start + i);
      blob.data[off + static_cast<size_t>(r + i)] = static_cast<int32_t>((s.start + i) % P);
    }
    for (int64_t i = first_logit_row(s); i < n; ++i) logit_rows.push_back(static_cast<int32_t>(r + i));
    r_next += n;
  }
  // The kinds of lanes each layer appends to, and a table for each kind present (a dense profile
  // has no streaming lanes: a prompt chunk of T tokens then takes L·KV·T entries, not three times
  // that, to fill and upload).
  for (int64_t l = 0; l < L; ++l) {
    LayerPlan& lp = plans[static_cast<size_t>(l)];
    for (size_t bi = 0; bi < batch.size(); ++bi) {
      const kvcache::HeadRoles& roles = states[bi]->profile().roles;
      const bool one = batch[bi].tokens.size() == 1 && !decode_with_prefill;  // as below, for streaming lanes
      const auto li = static_cast<int32_t>(l);
      if (!roles.heads(li, HeadRole::kRetrieval).empty()) lp.retrieval_before = true;
      if (!roles.heads(li, HeadRole::kStreaming).empty()) (one ? lp.streaming_before : lp.streaming_after) = true;
    }
    const size_t lane_rows = static_cast<size_t>(KV) * R;
    if (lp.retrieval_before) lp.app_r = blob.take(lane_rows);
    if (lp.streaming_before) lp.app_sb = blob.take(lane_rows);
    if (lp.streaming_after) lp.app_s = blob.take(lane_rows);
  }
  // Per layer, each (sequence, KV head) lane: its append destinations and attention row. Layers are
  // independent (each writes its own LayerPlan and blob regions and reads the sequences' state):
  // steps of 1024 lanes or more build them in parallel (a 64-sequence decode step of Llama-3-8B has
  // 16384 lanes; at 8 sequences, 2048 lanes, touching each lane's page list cost 0.8 ms on one core
  // of the H200 machine with sparse profiles).
  // An exception leaves its layer's loop and is rethrown after the parallel region.
  std::vector<std::exception_ptr> failed(static_cast<size_t>(L));
#pragma omp parallel for schedule(dynamic) if (rows * L * KV >= 1024)
  for (int64_t l = 0; l < L; ++l) {
    LayerPlan& lp = plans[static_cast<size_t>(l)];
    try {
      int32_t* const data = blob.data.data();
      const size_t lane_rows = static_cast<size_t>(KV) * R;
      for (const auto& [present, at] : {std::pair{lp.retrieval_before, lp.app_r}, std::pair{lp.streaming_before, lp.app_sb},
                                        std::pair{lp.streaming_after, lp.app_s}}) {
        if (present) std::fill_n(data + at, lane_rows, -1);
      }
      for (size_t bi = 0; bi < batch.size(); ++bi) {
        const ForwardSeq& s = batch[bi];
        const int64_t r = row0[bi];
        const auto n = static_cast<int64_t>(s.tokens.size());
        const kvcache::SequenceKv& kv = *kvs[bi];
        const SequenceAttention& st = *states[bi];
        const kvcache::HeadRoles& roles = st.profile().roles;
        const kvcache::DecodeSelection& dec = st.profile().decode;
        const int64_t end = s.start + n;
        const bool decode = n == 1 && s.start >= s.prompt_len;
        for (int64_t hd = 0; hd < KV; ++hd) {
          const auto li = static_cast<int32_t>(l), hi = static_cast<int32_t>(hd);
          const int32_t slot = roles.slot(li, hi);
          const size_t lane_row = static_cast<size_t>(hd * rows + r);  // of the append tables
          // A prompt chunk under dynamic prefill sparsity (the CPU's rule, engine/paged_kv.cc), one
          // token long too: its block mask is estimated on the device from the chunk's queries.
          const kvcache::PrefillSparsity& pf = st.profile().prefill;
          const bool dynamic = !decode && roles.role(li, hi) == HeadRole::kRetrieval && pf.runs_on(s.prompt_len);
          const bool one = n == 1 && !decode_with_prefill && !dynamic;  // a one-token row: the decode kernel
          KeyLists& keys = one ? lp.decode_keys : lp.prefill_keys;
          cuda::PrefillRow pr;
          pr.q_row0 = static_cast<int32_t>(r);
          pr.n_tokens = static_cast<int32_t>(n);
          pr.q_pos0 = static_cast<int32_t>(s.start);
          pr.kv_head = hi;
          cuda::DecodeRow dr;
          dr.q_row = static_cast<int32_t>(r);
          dr.kv_head = hi;
          dr.q_pos = static_cast<int32_t>(s.start);
          // Lists expand_key_runs writes at the step's start; the append writes only the newest key, in
          // the last entry.
          dr.pages_plan_time = true;
          if (roles.role(li, hi) == HeadRole::kRetrieval) {
            const auto& pages = kv.retrieval_pages(slot);
            int32_t* const dest = data + lp.app_r + lane_row;
            for (int64_t i = 0; i < n; ++i) dest[i] = pages[static_cast<size_t>((s.start + i) / P)];
            const auto nb = static_cast<int32_t>((end + P - 1) / P);
            const int32_t table = region[bi] + slot * lane_blocks;  // the lane's block table in the store
            const auto rule = decode ? st.decode_keys(l, hd, end) : SequenceAttention::DecodeKeys::kAll;
            if (decode) lp.context_tokens += end;
            if (rule == SequenceAttention::DecodeKeys::kFresh) {
              // Selected on the device: a decode row after the layer's host-listed ones (below), its
              // entries reserved for page_select, which reads every block of the lane.
              const int32_t count = cuda::selected_page_count(end, {P, LP, dec.sink_tokens, dec.token_budget});
              dr.pages_plan_time = false;  // page_select writes its entries in the same stream
              lp.fresh_rows.push_back(dr);
              lp.fresh_entries.push_back(count);
              lp.sel_runs.push_back(kernels::cpu::KeyRun{.count = nb, .src = table, .src_step = 0, .first = 0,
                                                         .end = static_cast<int32_t>(end),
                                                         .pages_at = lp.sel_indptr.back()});
              lp.sel_indptr.push_back(lp.sel_indptr.back() + nb);
              lp.sel_lens.push_back(static_cast<int32_t>(end));
              lp.sel_out_indptr.push_back(lp.sel_out_indptr.back() + count);
              lp.sel_q.push_back(r * qkv_w + hd * group * D);
              lp.sel_owner.emplace_back(s.id, hi);
              lp.max_blocks = std::max(lp.max_blocks, nb);
              continue;
            }
            if (rule == SequenceAttention::DecodeKeys::kPrevious) {
              for (const int32_t b : st.previous_blocks(l, hd, end, P)) {
                const int64_t count = std::min<int64_t>(P, end - int64_t{b} * P);
                keys.add(pages[static_cast<size_t>(b)], int64_t{b} * P, count);
                lp.selected_tokens += count;
              }
            } else {  // every block, from the store
              keys.add_blocks(table, 0, nb, end);
              if (decode) lp.selected_tokens += end;
            }
            if (dynamic) {  // the block mask, estimated from the chunk's queries and these keys
              pr.mask = cuda::MaskKind::kBlocks;
              pr.block_tokens = pf.block_tokens;
              lp.mass_rows.push_back({.q_row0 = pr.q_row0,
                                      .n_tokens = pr.n_tokens,
                                      .q_pos0 = pr.q_pos0,
                                      .kv_head = hi,
                                      .list_row = static_cast<int32_t>(lp.prefill_rows.size()),
                                      .block_tokens = pf.block_tokens,
                                      .stride = pf.stride,
                                      .threshold = pf.threshold});
            }
          } else {
            const kvcache::StreamingGeometry& g = *kv.streaming_geometry();
            const auto& pages = kv.streaming_pages(slot);
            // Keys seen: sink blocks, then the ring's blocks oldest first. A one-token row writes its
            // key into the ring first (the slot it takes held position t − ring_pages·P, outside the
            // window) and reads it from there; a longer chunk reads the keys before it from the
            // ring, its own from the step's buffer (new_kv), and enters the ring after the
            // attention: only positions the ring still holds after the chunk (and sink blocks).
            int64_t seen = s.start;
            if (one) {
              data[lp.app_sb + lane_row] = pages[static_cast<size_t>(g.locate(s.start).index)];
              seen = end;
            } else {
              int32_t* const dest = data + lp.app_s + lane_row;
              // Positions the chunk overwrites in the ring go to their block's snapshot, where the
              // prefix cache reserved one (KvCacheManager::snapshot_target), else nowhere.
              const int64_t keep_from = std::max<int64_t>(s.start, end - int64_t{g.ring_pages()} * P);
              for (int64_t i = 0; i < n; ++i) {
                const int64_t p = s.start + i;
                if (p >= keep_from || p < int64_t{g.sink_pages()} * P) {
                  dest[i] = pages[static_cast<size_t>(g.locate(p).index)];
                } else if (const std::vector<int32_t>* snapshot = manager.snapshot_target(s.id, p / P)) {
                  dest[i] = (*snapshot)[static_cast<size_t>(slot)];
                }
              }
            }
            const int64_t last_block = seen > 0 ? (seen - 1) / P : -1;
            for (int64_t b = 0; b < g.sink_pages() && b <= last_block; ++b) {
              keys.add(pages[static_cast<size_t>(b)], b * P, std::min<int64_t>(P, seen - b * P));
            }
            for (int64_t b = std::max<int64_t>(g.sink_pages(), last_block - g.ring_pages() + 1); b <= last_block; ++b) {
              keys.add(pages[static_cast<size_t>(g.locate(b * P).index)], b * P, std::min<int64_t>(P, seen - b * P));
            }
            pr.mask = dr.mask = cuda::MaskKind::kBand;
            pr.sink = dr.sink = g.window().sink_tokens;
            pr.local = dr.local = g.window().local_tokens;
            pr.new_kv = 1;
          }
          const int32_t entries = keys.close_row();
          if (one) {
            lp.decode_rows.push_back(dr);
            lp.decode_entries.push_back(entries);
          } else {
            lp.prefill_rows.push_back(pr);
          }
        }
      }
    } catch (...) {
      failed[static_cast<size_t>(l)] = std::current_exception();
    }
  }
  for (const std::exception_ptr& e : failed) {
    if (e) std::rethrow_exception(e);
  }
  for (const LayerPlan& lp : plans) {
    tab.context_tokens += lp.context_tokens;
    tab.selected_tokens += lp.selected_tokens;
    tab.max_blocks = std::max(tab.max_blocks, lp.max_blocks);
  }
  // Fresh selections: decode rows after each layer's host-listed ones.
  for (LayerPlan& lp : plans) {
    lp.fresh_from = lp.decode_rows.size();
    for (size_t k = 0; k < lp.fresh_rows.size(); ++k) {
      lp.decode_rows.push_back(lp.fresh_rows[k]);
      lp.decode_entries.push_back(lp.fresh_entries[k]);
      lp.decode_keys.reserve_row(lp.fresh_entries[k]);
    }
    if (lp.sel_owner.empty()) continue;
    lp.q_at = tab.step_q.size();
    tab.step_q.insert(tab.step_q.end(), lp.sel_q.begin(), lp.sel_q.end());
    lp.picked_at = static_cast<size_t>(tab.picked_total);
    tab.picked_total += lp.sel_out_indptr.back();
  }
  // The LM head's rows: those the host reads first, then the drawn ones (one contiguous block each).
  size_t k = 0, at = selr, at_drawn = selr + static_cast<size_t>(out_rows) - draws.size();
  for (size_t j = 0; j < logit_rows.size(); ++j) {
    if (k < draws.size() && draws[k].row == static_cast<int64_t>(j)) {
      blob.data[at_drawn++] = logit_rows[j];
      ++k;
    } else {
      blob.data[at++] = logit_rows[j];
    }
  }
  std::vector<kernels::cpu::KeyRun>& runs = tab.all_runs;
  for (LayerPlan& lp : plans) {
    lp.prefill_keys.place(blob, tab.lists, runs);
    lp.decode_keys.place(blob, tab.lists, runs);
    if (lp.sel_owner.empty()) continue;
    lp.s_ip = blob.append(lp.sel_indptr);
    lp.s_pg = tab.lists.take(static_cast<size_t>(lp.sel_indptr.back()));
    for (kernels::cpu::KeyRun r : lp.sel_runs) {
      r.pages_at += static_cast<int32_t>(lp.s_pg);  // page ids only
      runs.push_back(r);
    }
    lp.s_len = blob.append(lp.sel_lens);
    lp.s_out = blob.append(lp.sel_out_indptr);
  }
  check(tab.lists.size <= static_cast<size_t>(std::numeric_limits<int32_t>::max()) &&
            blob.data.size() + runs.size() * 8 <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
        "build_step_tables: a step's tables past int32 offsets");
  tab.n_runs = static_cast<int32_t>(runs.size());
  tab.runs = blob.take(runs.size() * 8);
  std::memcpy(blob.data.data() + tab.runs, runs.data(), runs.size() * sizeof(kernels::cpu::KeyRun));
}

}  // namespace sparseserve
