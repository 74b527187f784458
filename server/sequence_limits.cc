#include "server/sequence_limits.h"

#include <algorithm>

#include "engine/engine.h"

namespace sparseserve {

int64_t SequenceLimits::tokens(std::string_view profile, int64_t context) const {
  const auto it = kv_tokens.find(profile.empty() ? std::string_view(default_profile) : profile);
  return it == kv_tokens.end() ? context : std::min(context, it->second);
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
