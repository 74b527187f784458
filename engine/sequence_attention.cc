#include "engine/sequence_attention.h"

#include <algorithm>

namespace sparseserve {

SequenceAttention::SequenceAttention(const kvcache::SparsityProfile& profile, int64_t n_layers, int64_t n_kv_heads,
                                     int64_t stored)
    : profile_(&profile),
      n_kv_heads_(n_kv_heads),
      length_(stored),
      selected_(static_cast<size_t>(n_layers * n_kv_heads)),
      selected_at_blocks_(static_cast<size_t>(n_layers * n_kv_heads), 0) {}

SequenceAttention::DecodeKeys SequenceAttention::decode_keys(int64_t layer, int64_t head, int64_t end) const {
  const kvcache::DecodeSelection& dec = profile_->decode;
  const bool dense_layer = std::find(dec.dense_layers.begin(), dec.dense_layers.end(), layer) != dec.dense_layers.end();
  if (!dec.enabled || dense_layer || end <= dec.token_budget) return DecodeKeys::kAll;
  if (selected_[pair(layer, head)].empty() || decode_steps_ % dec.reselect_interval == 0) return DecodeKeys::kFresh;
  return DecodeKeys::kPrevious;
}

std::vector<int32_t> SequenceAttention::previous_blocks(int64_t layer, int64_t head, int64_t end,
                                                        int32_t page_tokens) const {
  std::vector<int32_t> out = selected_[pair(layer, head)];
  const auto nb = static_cast<int32_t>((end + page_tokens - 1) / page_tokens);
  for (int32_t b = selected_at_blocks_[pair(layer, head)]; b < nb; ++b) out.push_back(b);
  return out;
}

void SequenceAttention::record_selection(int64_t layer, int64_t head, std::vector<int32_t> blocks, int64_t end,
                                         int32_t page_tokens) {
  selected_[pair(layer, head)] = std::move(blocks);
  selected_at_blocks_[pair(layer, head)] = static_cast<int32_t>((end + page_tokens - 1) / page_tokens);
}

void SequenceAttention::end_step(const ForwardSeq& s) {
  const auto n = static_cast<int64_t>(s.tokens.size());
  if (n == 1 && s.start >= s.prompt_len) ++decode_steps_;
  length_ = s.start + n;
}

void SequenceAttention::restart(int64_t length, const kvcache::SparsityProfile& profile) {
  profile_ = &profile;
  length_ = length;
  decode_steps_ = 0;
  for (auto& sel : selected_) sel.clear();
  std::fill(selected_at_blocks_.begin(), selected_at_blocks_.end(), 0);
}

}  // namespace sparseserve
