#include "engine/cuda/device_step.h"

#include <initializer_list>

namespace sparseserve {

void DeviceStep::describe(std::vector<int64_t>& shape, std::vector<int64_t>& key) const {
  const auto addr = [](const void* p) { return static_cast<int64_t>(reinterpret_cast<uintptr_t>(p)); };
  shape = {rows, out_rows, n_host, n_drawn, n_runs > 0};
  for (const LayerLaunch& l : layers) {
    shape.insert(shape.end(), {l.prefill != nullptr, l.masks != nullptr, l.decode != nullptr, l.retrieval_before,
                               l.streaming_before, l.streaming_after, static_cast<int64_t>(l.select_runs.size())});
  }
  key = shape;
  for (const size_t v : {ids, pos, off, selr, runs}) key.push_back(static_cast<int64_t>(v));
  key.push_back(n_runs);
  key.push_back(max_blocks);
  for (const void* p :
       std::initializer_list<const void*>{t, lists, store, h, xn, qkv, att, proj, gate_up, act, sel, logits, logits_f32,
                                          draw_params, draw_tokens, q_offsets, picked, scores, row_ready,
                                          mask_workspace, block_allowed, split_workspace}) {
    key.push_back(addr(p));
  }
  key.push_back(split_floats);
  for (const LayerLaunch& l : layers) {
    key.insert(key.end(), {addr(l.prefill), addr(l.masks), addr(l.decode)});
    for (const size_t v : {l.app_r, l.app_sb, l.app_s}) key.push_back(static_cast<int64_t>(v));
    for (const ListOffsets& o : {l.prefill_keys, l.decode_keys}) {
      for (const size_t v : {o.ip, o.pg, o.p0, o.ln}) key.push_back(static_cast<int64_t>(v));
    }
    const SelectOffsets& s = l.sel;
    for (const size_t v : {s.indptr, s.pages, s.lens, s.out_indptr, s.q_at, s.picked_at, s.region}) {
      key.push_back(static_cast<int64_t>(v));
    }
    for (const SelectRun& r : l.select_runs) key.insert(key.end(), {r.first, r.rows, r.sink_tokens, r.token_budget});
  }
}

}  // namespace sparseserve
