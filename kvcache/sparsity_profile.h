// A named sparsity profile (DESIGN.md §5-§6): head roles plus the streaming window, decode page
// selection and prefill sparsity parameters. Immutable once loaded and validated.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvcache/geometry.h"
#include "kvcache/head_roles.h"

namespace sparseserve::kvcache {

struct DecodeSelection {
  bool enabled = false;
  int32_t token_budget = 1024;      // selected tokens per (sequence, retrieval KV head) ≤ budget
  int32_t sink_tokens = 64;         // the pages holding the first sink_tokens tokens are always kept
  int32_t reselect_interval = 4;    // decode steps between selections
  std::vector<int32_t> dense_layers;  // layers that never select
};

struct PrefillSparsity {
  bool dynamic = false;             // XAttention-style block selection for retrieval heads
  int32_t block_tokens = 64;        // query/key block size
  int32_t stride = 8;               // antidiagonal sampling stride
  float threshold = 0.9f;           // kept share of the estimated attention mass
  int32_t min_prompt_tokens = 2048; // shorter prompts run dense
  // A prompt of prompt_len tokens runs the dynamic prefill (else a dense one, also under this profile).
  bool runs_on(int64_t prompt_len) const { return dynamic && prompt_len >= min_prompt_tokens; }
};

struct SparsityProfile {
  std::string name;
  HeadRoles roles;
  std::optional<StreamingWindow> streaming;  // present when any head streams
  DecodeSelection decode;
  PrefillSparsity prefill;

  bool is_dense() const { return roles.all_retrieval() && !decode.enabled && !prefill.dynamic; }
  static SparsityProfile dense(int32_t n_layers, int32_t n_kv_heads);
};

}  // namespace sparseserve::kvcache
