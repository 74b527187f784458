#include "server/sequence_limits.h"

#include <algorithm>

#include "engine/engine.h"

namespace sparseserve {

int64_t SequenceLimits::tokens(std::string_view profile, int64_t context) const {
  const auto it = kv_tokens.find(profile.empty() ? std::string_view(default_profile) : profile);
  return it == kv_tokens.end() ? context : std::min(context, it->second);
}

std::string SequenceLimits::describe(std::string_view profile, int64_t context) const {
  const int64_t n = tokens(profile, context);
  if (n >= context) return "This model's maximum context length is " + std::to_string(context) + " tokens.";
  return "This server's maximum context length is " + std::to_string(n) +
         " tokens (what its KV cache holds of one sequence under sparsity profile '" +
         std::string(profile.empty() ? std::string_view(default_profile) : profile) + "'; the model's is " +
         std::to_string(context) + ").";
}

void truncate_prompt(std::vector<int32_t>& prompt, int64_t keep, int32_t bos) {
  const auto n = static_cast<int64_t>(prompt.size());
  if (n <= keep) return;
  const bool keep_bos = bos >= 0 && prompt.front() == bos;
  // [bos] + the last keep - 1 tokens, or the last keep tokens.
  prompt.erase(prompt.begin() + (keep_bos ? 1 : 0), prompt.end() - (keep_bos ? keep - 1 : keep));
}

SequenceLimits SequenceLimits::of(const Engine& engine) {
  SequenceLimits l;
  l.default_profile = engine.profiles().default_profile;
  const int64_t context = engine.model().config.max_context;
  for (const auto& [name, profile] : engine.profiles().profiles) {
    if (const int64_t n = engine.max_sequence_tokens(name); n < context) l.kv_tokens[name] = n;
  }
  return l;
}

}  // namespace sparseserve
