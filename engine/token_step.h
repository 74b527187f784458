// What a step does on the host with the sampling row of one request (engine/engine.cc's loop):
// picks its next token (the one the device drew, or sampled here after the logits processors), then
// takes the token through the request's structured output, stop rules and detokenizer into the
// request's next delta, and says whether the request ends there.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "engine/live_request.h"
#include "engine/request.h"
#include "engine/tokenizer.h"
#include "engine/vocabulary_bytes.h"

namespace sparseserve {

// Appends r's next token to r.tokens: `drawn` (the device's draw, whose row is the model's own when
// logprobs are asked for: DeviceDraw::keep_row) or, without one, a token sampled from `row` after the
// logits processors (apply_logits_processors; `row` is changed). With req.logprobs ≥ 0, returns the
// token's logprob and the top alternatives under the model's distribution (before any processor).
// may_stop: min_tokens is reached. InvalidArgument when the processors leave no token to sample.
std::optional<TokenLogprob> next_token(LiveRequest& r, const VocabularyBytes& vocab, bool may_stop,
                                       std::span<float> row, std::optional<int32_t> drawn);

// How a request goes on after its newest token.
struct TokenEnd {
  FinishReason reason = FinishReason::kNone;  // kNone: it goes on
  std::string stop_reason;                    // kStop: the stop string or stop_token_ids entry's text
  std::string error;                          // kError: the request's own (an InvalidArgument to its client)
};

// Takes r's newest token (r.tokens.back(), the gen-th generated) through the request: a JSON or text
// constraint follows it (a token it refuses ends the request with an error, nothing pushed); a stop
// token (stop_token_ids, EOS, end of turn; once may_stop and the structured output is whole) ends it
// with the text held back, its own text only under include_stop_str_in_output; otherwise its text
// goes through the stop strings, and one completed ends the request there. `out`, holding the
// delta's counts, token and logprob, gets the text and is pushed to r.stream unless the end is an
// error. Then a structured output that is whole and admits nothing more, or max_new tokens, ends it.
// Sets r.text_complete when every text delta is sent, and r.stop_token for a stop_token_ids entry.
TokenEnd emit_token(LiveRequest& r, const Tokenizer& tokenizer, const VocabularyBytes& vocab, bool may_stop,
                    RequestOutput out);

}  // namespace sparseserve
