// A request as the engine's loop holds it (engine/engine.cc), and what a step does on the host with
// the logits rows of one: the prompt logprobs a prefill chunk yields, the logits processors before
// sampling, whether the device may draw its token instead, the prompt logprobs' hand-off.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/json_text.h"
#include "engine/request.h"
#include "engine/request_stream.h"
#include "engine/sampler.h"
#include "engine/stop_strings.h"
#include "engine/text_constraint.h"
#include "engine/tokenizer.h"
#include "engine/vocabulary_bytes.h"
#include "kvcache/sparsity_profile.h"

namespace sparseserve {

using EngineClock = std::chrono::steady_clock;

// One live request as the loop sees it.
struct LiveRequest {
  uint64_t key = 0;
  Request req;
  const kvcache::SparsityProfile* profile = nullptr;
  std::vector<int32_t> tokens;  // prompt, then generated
  int64_t prompt_len = 0;
  int64_t max_new = 0;          // max_tokens capped by the context left
  Sampler sampler;
  IncrementalDetokenizer detok;
  StopStringFilter stops;
  std::vector<int32_t> stop_ids;      // req.stop_token_ids: reported as stop_token
  std::vector<int32_t> implicit_stops;  // EOS and the end of turn (neither under ignore_eos): no stop reason
  std::shared_ptr<RequestStreamImpl> stream;
  EngineClock::time_point arrival, first_token, last_token;
  bool bound = false;           // registered with the KV backend
  bool text_complete = false;   // a stop string or stop token ended it: every text delta is sent
  int64_t prompt_counted = 0;   // prompt tokens counted in metrics.prompt_tokens (not again on recompute)
  int64_t cached_tokens = -1;   // prompt tokens its first admission found in the prefix cache (-1: not yet run)
  bool prefix_lookup = false;   // it looks its prompt up in the prefix cache (the metrics count it)
  int32_t stop_token = -1;      // the stop_token_ids entry that ended it
  // req.prompt_logprobs: the entries so far (prompt tokens 1 .. prompt_lp_next), sent with the first
  // delta; a recompute after preemption does not collect them again.
  std::vector<TokenLogprob> prompt_lps;
  int64_t prompt_lp_next = 0;   // the next position whose logits give a prompt token's logprob
  bool prompt_lps_sent = false;
  std::optional<JsonText> json;  // req.json_object / json_schema: the generated text so far, while it constrains
  std::unique_ptr<TextLanguage> language;  // req.choices / regex / grammar: likewise
  uint64_t draw_seed = 0;  // the seed of tokens drawn on the device: req.sampling.seed, else random
  MaskCache language_masks;  // `language`'s masks per state (a grammar's states come back)
};

// Whether a token of r may be drawn by the backend on the device (StepBackend's DeviceDraw): nothing
// in the request changes the logits row on the host (logprobs only read it: DeviceDraw::keep_row),
// and its sampler's parameters are the device sampler's (no penalty, no bias). So a seeded request
// draws the same tokens with or without logprobs.
bool drawn_on_device(const LiveRequest& r);

// Moves the prompt logprobs collected so far into the request's first delta (once).
void take_prompt_logprobs(LiveRequest& r, RequestOutput& out);

// The prompt logprobs in a chunk's logits rows (rows [count][V], position start + i at row i):
// position p's logits give prompt token p + 1, collected in order from r.prompt_lp_next.
void collect_prompt_logprobs(LiveRequest& r, const float* rows, int64_t V, int64_t start, int64_t count);

// The logits processors, applied to a row for sampling only (logprobs stay the model's, as vLLM
// reports them): allowed_token_ids (every other id −∞), bad_words (a banned sequence's last token
// where the generated tokens end with the rest of it), a JSON or text constraint, and before
// min_tokens (!may_stop) no stop id.
void apply_logits_processors(LiveRequest& r, const VocabularyBytes& vocab, bool may_stop, std::span<float> row);

}  // namespace sparseserve
