// A profile that makes a decode step use every optional launch, for the GPU step tests: lanes
// alternate retrieval and streaming (layer by layer, head by head: with 2 KV heads, head 0 retrieves
// and head 1 streams in every layer), a streaming window of sink 16 + local 40, and decode page
// selection on the retrieval lanes of every layer but 0 (64-token budget, 16 sink tokens,
// reselected every 3 steps).
#pragma once

#include <cstdint>
#include <vector>

#include "kvcache/sparsity_profile.h"

namespace sparseserve {

inline kvcache::SparsityProfile selecting_profile(int32_t n_layers, int32_t n_kv_heads) {
  using kvcache::HeadRole;
  kvcache::SparsityProfile p = kvcache::SparsityProfile::dense(n_layers, n_kv_heads);
  p.name = "select";
  std::vector<HeadRole> roles;
  for (int32_t i = 0; i < n_layers * n_kv_heads; ++i) {
    roles.push_back(i % 2 == 0 ? HeadRole::kRetrieval : HeadRole::kStreaming);
  }
  p.roles = kvcache::HeadRoles(n_layers, n_kv_heads, roles);
  p.streaming = kvcache::StreamingWindow{16, 40};
  p.decode.enabled = true;
  p.decode.token_budget = 64;
  p.decode.sink_tokens = 16;
  p.decode.reselect_interval = 3;
  p.decode.dense_layers = {0};
  return p;
}

}  // namespace sparseserve
