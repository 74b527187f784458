#include "engine/token_step.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/errors.h"
#include "engine/json_constraint.h"
#include "engine/logprobs.h"

namespace sparseserve {

namespace {

// The processors may leave no token, or refuse a grammar they cannot follow: that ends the request
// with an error of its own (400), not with a token nothing allowed.
void apply_processors(LiveRequest& r, const VocabularyBytes& vocab, bool may_stop, std::span<float> row) {
  apply_logits_processors(r, vocab, may_stop, row);
  if (std::all_of(row.begin(), row.end(), [](float l) { return l == -INFINITY; })) {
    throw InvalidArgument("no token is left to sample: allowed_token_ids, bad_words, the stop rules and the "
                          "structured output exclude every one");
  }
}

bool contains(const std::vector<int32_t>& ids, int32_t id) { return std::find(ids.begin(), ids.end(), id) != ids.end(); }

}  // namespace

std::optional<TokenLogprob> next_token(LiveRequest& r, const VocabularyBytes& vocab, bool may_stop,
                                       std::span<float> row, std::optional<int32_t> drawn) {
  if (r.req.logprobs < 0) {
    if (drawn) {  // nothing applies to the row
      r.sampler.accept(*drawn);
      r.tokens.push_back(*drawn);
    } else {
      apply_processors(r, vocab, may_stop, row);
      r.tokens.push_back(r.sampler.sample(row));
    }
    return std::nullopt;
  }
  // The log-softmax of the model's own distribution, before the sampling transforms.
  double lse = 0;
  TokenLogprob lp = top_logprobs(row, r.req.logprobs, lse);
  int32_t tok;
  float raw;
  if (drawn) {
    tok = *drawn;
    raw = row[static_cast<size_t>(tok)];
    r.sampler.accept(tok);
  } else {
    const std::vector<float> raw_row(row.begin(), row.end());
    apply_processors(r, vocab, may_stop, row);
    tok = r.sampler.sample(row);
    raw = raw_row[static_cast<size_t>(tok)];
  }
  lp.token = tok;
  lp.logprob = static_cast<float>(raw - lse);
  r.tokens.push_back(tok);
  return lp;
}

TokenEnd emit_token(LiveRequest& r, const Tokenizer& tokenizer, const VocabularyBytes& vocab, bool may_stop,
                    RequestOutput out) {
  const int32_t tok = r.tokens.back();
  const int64_t gen = static_cast<int64_t>(r.tokens.size()) - r.prompt_len;
  // A stop id drawn under a structured output that is not whole yet is an ordinary token: the mask
  // let it through as text.
  const bool constrained_open = (r.json && !r.json->complete()) || (r.language && !r.language->complete());
  const bool may_stop_here = may_stop && !constrained_open;
  const bool requested_stop = may_stop_here && contains(r.stop_ids, tok);
  const bool stop_token = requested_stop || (may_stop_here && contains(r.implicit_stops, tok));
  // The masks let only continuations through, so a refused token means the two disagree (a grammar
  // too ambiguous for push() to follow what accepts() took): the request ends with an error rather
  // than go on unconstrained.
  if (r.json && !stop_token && !advance_json(*r.json, vocab.text(tok))) {
    return {FinishReason::kError, "", "the sampled token cannot continue the JSON output"};
  }
  if (r.language && !stop_token && !r.language->push(vocab.text(tok))) {
    return {FinishReason::kError, "",
            "the sampled token cannot continue the structured output (a grammar too ambiguous to follow: the text "
            "so far has more parses than can be tracked)"};
  }
  const bool language_done = r.language && !stop_token && r.language->complete() && !r.language->extendable();
  // A stop token's own text is not searched for stop strings: the bytes held back are flushed
  // instead, and may still complete one, which is then the reason.
  const auto res = r.stops.push(stop_token ? r.detok.flush() : r.detok.push(tok), may_stop);
  out.text = res.text;
  if (res.stopped) {
    r.text_complete = true;
    if (r.req.include_stop_str_in_output) out.text += res.matched;
    r.stream->push(std::move(out));
    return {FinishReason::kStop, res.matched, ""};
  }
  if (stop_token) {
    // As in vLLM: the stop token counts as generated and keeps its logprob, but its text is left out
    // unless include_stop_str_in_output; a stop_token_ids entry is the stop reason, EOS and the end
    // of turn leave none. The text held back comes first, and is then complete.
    r.text_complete = true;
    out.text += r.stops.flush();
    if (r.req.include_stop_str_in_output) {
      out.text += tokenizer.decode(std::span<const int32_t>(&tok, 1), r.req.skip_special_tokens);
    }
    r.stream->push(std::move(out));
    if (!requested_stop) return {FinishReason::kStop, "", ""};
    r.stop_token = tok;
    return {FinishReason::kStop, tokenizer.decode(std::span<const int32_t>(&tok, 1)), ""};
  }
  r.stream->push(std::move(out));
  if (language_done) return {FinishReason::kStop, "", ""};
  if (gen >= r.max_new) return {FinishReason::kLength, "", ""};
  return {};
}

}  // namespace sparseserve
