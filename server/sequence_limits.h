// The longest sequence (prompt + completion) a request may ask for, the same on every front end:
// the model's context, or less where the server's KV cache holds less of one sequence under the
// request's sparsity profile (Engine::max_sequence_tokens). vLLM never accepts a request its cache
// cannot finish, and calls that limit max_model_len.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace sparseserve {

class Engine;

struct SequenceLimits {
  std::string default_profile;                             // for a request that names none
  std::map<std::string, int64_t, std::less<>> kv_tokens;   // per profile, where under the context

  // min(context, kv_tokens of `profile`, or of the default profile for "").
  int64_t tokens(std::string_view profile, int64_t context) const;
  // The sentence an error opens with: "This model's maximum context length is N tokens." or, where
  // the KV cache holds less, "This server's maximum context length is N tokens (...)".
  std::string describe(std::string_view profile, int64_t context) const;
  // From the engine's KV cache and profiles.
  static SequenceLimits of(const Engine& engine);
};

// vLLM's truncate_prompt_tokens: keeps the last `keep` (≥ 1) tokens of `prompt`. `bos` ≥ 0: a
// prompt that starts with it keeps it in front, and it counts toward `keep` (HF's left truncation
// keeps the special tokens the tokenizer adds); pass the BOS the tokenizer adds to the prompts it
// encodes, -1 for a prompt of token ids, which is cut as given.
void truncate_prompt(std::vector<int32_t>& prompt, int64_t keep, int32_t bos);

}  // namespace sparseserve
