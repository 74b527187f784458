// What the front ends hand the engine and what they get back. HTTP and gRPC both translate into
// exactly these types, so both behave the same.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/grammar.h"
#include "engine/json_schema.h"
#include "engine/regex_dfa.h"
#include "engine/sampling_params.h"

namespace sparseserve {

struct Request {
  std::string id;                      // unique among live requests (front ends generate it)
  std::vector<int32_t> prompt;         // token ids (front ends tokenize / apply the chat template)
  SamplingParams sampling;
  int64_t max_tokens = 256;            // ≥ 0; capped by the context left after the prompt
  int64_t min_tokens = 0;              // 0 .. max_tokens: no stop (EOS, end of turn, stop_token_ids, stop
                                       // strings) before this many generated tokens (vLLM's min_tokens)
  std::vector<std::string> stop;       // stop strings (in the output only with include_stop_str_in_output)
  bool include_stop_str_in_output = false;  // also the text of a stop token (EOS included, as vLLM)
  bool skip_special_tokens = true;     // special tokens left out of the text
  std::vector<int32_t> stop_token_ids; // extra stop ids; one that stops the request is its stop_token
  std::vector<int32_t> allowed_token_ids;  // non-empty: only these ids may be sampled (vLLM); empty: all
  std::vector<std::vector<int32_t>> bad_words;  // banned token sequences (engine/bad_words.h), each non-empty
  bool json_object = false;            // the output is one JSON object (OpenAI's JSON mode: response_format
                                       // json_object; engine/json_constraint.h); max_tokens may still cut it
  std::shared_ptr<const JsonSchema> json_schema;  // non-null: the output is one value of this schema
                                       // (response_format json_schema, vLLM's guided_json); not with json_object
  std::shared_ptr<const std::vector<std::string>> choices;  // non-null: the output is exactly one of these
                                       // (vLLM's guided_choice; ChoiceText::sorted); not with the JSON modes
  std::shared_ptr<const RegexDfa> regex;  // non-null: the output is one whole match of this regex (vLLM's
                                       // guided_regex; engine/regex_dfa.h); not with the modes above
  std::shared_ptr<const Grammar> grammar;  // non-null: the output is one derivation of its root (vLLM's
                                       // guided_grammar; engine/grammar.h); not with the modes above
  bool ignore_eos = false;
  int32_t end_of_turn = -1;            // chat: the template's end-of-turn token, a stop like EOS (also
                                       // ignored under ignore_eos, as vLLM ignores every EOS id of the
                                       // generation config; not reported as stop_token); -1: none
  std::string sparsity;                // profile name; empty = the model's default profile
  int32_t logprobs = -1;               // -1: none; k ≥ 0: the sampled token's logprob + k top
  int32_t prompt_logprobs = -1;        // -1: none; k ≥ 0: each prompt token after the first, its logprob
                                       // given the tokens before it + k top (vLLM's prompt_logprobs)
  int32_t priority = 0;                // lower runs first when the scheduler uses priorities
  // vLLM's cache_salt: only requests with the same salt share prefix-cache blocks (one tenant's
  // prompts cannot be probed by another's timings). Empty: no salt.
  std::string cache_salt;
  bool stream = true;                  // informational (every request produces deltas)

  // How many output constraints are set (json_object, json_schema, choices, regex, grammar): at most
  // one may be.
  int32_t output_constraints() const {
    return json_object + (json_schema != nullptr) + (choices != nullptr) + (regex != nullptr) + (grammar != nullptr);
  }
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;  // most likely tokens at that step, best first
  int32_t rank = 0;  // prompt logprobs: logprob_rank (vLLM's: ids at least as likely, itself included); else 0
};

enum class FinishReason { kNone, kStop, kLength, kAbort, kError };
const char* finish_reason_name(FinishReason r);  // "", "stop", "length", "abort", "error"

// One delta of a request's output. The last one has finished = true.
struct RequestOutput {
  std::vector<int32_t> token_ids;      // new tokens in this delta (a stop token included, as in vLLM)
  std::string text;                    // new text (complete UTF-8, stop strings held back/cut)
  std::vector<TokenLogprob> logprobs;  // per new token, when requested
  std::vector<TokenLogprob> prompt_logprobs;  // the first delta, when requested: prompt tokens 1 .. n − 1
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_reason;             // the stop string, or the stop_token_ids entry decoded, that ended it
  int32_t stop_token = -1;             // the stop_token_ids entry that ended it, else -1 (EOS: -1, no reason)
  std::string error;                   // kError: what went wrong
  bool request_error = false;          // kError caused by the request's own settings (a structured output
                                       // it cannot follow, no token left to sample), not an internal
                                       // failure: front ends answer 400 / INVALID_ARGUMENT
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;           // of prompt_tokens, those its first admission found in the prefix cache
  int64_t completion_tokens = 0;       // total so far, a stop token included
};

}  // namespace sparseserve
