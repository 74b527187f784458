#include "engine/live_request.h"

#include <algorithm>
#include <cmath>

#include "engine/bad_words.h"
#include "engine/json_constraint.h"
#include "engine/logprobs.h"

namespace sparseserve {

bool drawn_on_device(const LiveRequest& r) {
  const SamplingParams& p = r.req.sampling;
  const bool may_stop = static_cast<int64_t>(r.tokens.size()) - r.prompt_len >= r.req.min_tokens;
  return r.req.allowed_token_ids.empty() && r.req.bad_words.empty() && !r.json && !r.language &&
         (may_stop || (r.stop_ids.empty() && r.implicit_stops.empty())) && p.presence_penalty == 0.0f &&
         p.frequency_penalty == 0.0f && p.repetition_penalty == 1.0f && p.logit_bias.empty();
}

void take_prompt_logprobs(LiveRequest& r, RequestOutput& out) {
  if (r.req.prompt_logprobs < 0 || r.prompt_lps_sent) return;
  out.prompt_logprobs = std::move(r.prompt_lps);
  r.prompt_lps.clear();
  r.prompt_lps_sent = true;
}

void collect_prompt_logprobs(LiveRequest& r, const float* rows, int64_t V, int64_t start, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const int64_t p = start + i;
    if (p != r.prompt_lp_next || p + 1 >= r.prompt_len) continue;
    const std::span<const float> prow(rows + i * V, static_cast<size_t>(V));
    double lse = 0;
    TokenLogprob lp = top_logprobs(prow, r.req.prompt_logprobs, lse);
    lp.token = r.tokens[static_cast<size_t>(p + 1)];
    const float x = prow[static_cast<size_t>(lp.token)];
    lp.logprob = static_cast<float>(x - lse);
    lp.rank = logprob_rank(prow, lp.token);
    r.prompt_lps.push_back(std::move(lp));
    ++r.prompt_lp_next;
  }
}

void apply_logits_processors(LiveRequest& r, const VocabularyBytes& vocab, bool may_stop, std::span<float> row) {
  if (!r.req.allowed_token_ids.empty()) {
    std::vector<float> kept;
    kept.reserve(r.req.allowed_token_ids.size());
    for (int32_t id : r.req.allowed_token_ids) kept.push_back(row[static_cast<size_t>(id)]);
    std::fill(row.begin(), row.end(), -INFINITY);
    for (size_t i = 0; i < kept.size(); ++i) row[static_cast<size_t>(r.req.allowed_token_ids[i])] = kept[i];
  }
  if (!r.req.bad_words.empty()) {
    ban_bad_words(r.req.bad_words, std::span<const int32_t>(r.tokens).subspan(static_cast<size_t>(r.prompt_len)), row);
  }
  if (r.json || r.language) {
    std::vector<int32_t> stops = r.stop_ids;
    stops.insert(stops.end(), r.implicit_stops.begin(), r.implicit_stops.end());
    if (r.json) constrain_json(*r.json, vocab, stops, may_stop, row);
    if (r.language) constrain_text(*r.language, vocab, stops, may_stop, row, &r.language_masks);
  }
  if (may_stop) return;
  for (const auto* ids : {&r.stop_ids, &r.implicit_stops}) {
    for (int32_t id : *ids) row[static_cast<size_t>(id)] = -INFINITY;
  }
}

}  // namespace sparseserve
