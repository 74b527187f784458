// Per-model settings and named sparsity profiles, from configs/models/<name>.yaml (DESIGN.md §6).
//
// Schema (every key optional unless marked; unknown keys, wrong types and out-of-range values are
// errors):
//   name: STRING                                  required, non-empty
//   chat_template: auto | chatml | llama3         default auto (detect from the model's template)
//   kv_cache: { page_tokens, logical_page_tokens } default 64 / 16 (KvCacheConfig::validate rules)
//   default_profile: NAME                         default dense; must name a profile
//   profiles:                                     NAME: [A-Za-z0-9._-]+
//     dense: {}                                   reserved: always present, must be empty if given
//     NAME:                                       an empty profile is dense attention
//       heads: { pattern: FILE, retrieval_ratio: R | threshold: T | global_ratio: G }
//              pattern: a DuoAttention TSV, relative to the YAML's folder (or absolute);
//              exactly one rule (kvcache/head_pattern.h): R, G, T in (0, 1].
//              Without `heads` every head is retrieval.
//       streaming: { sink_tokens ≥ 0, local_tokens ≥ 1 }   default 64 / 256. Only with `heads`;
//              kept only when some head streams (its sink_tokens is decode's default either way).
//       decode: { selection: on|off (default on: the section's presence enables selection),
//                 token_budget (default 1024) ≥ the pages always kept: ceil(sink_tokens / page_tokens)
//                 sink pages and the newest page, and ≥ page_tokens,
//                 sink_tokens ≥ 0 (default: streaming's sink_tokens, else 64),
//                 reselect_interval ≥ 1 (default 4),
//                 dense_layers: [distinct layers in [0, n_layers)] (default none) }
//       prefill: { dynamic: on|off (required), block_tokens ∈ {16,32,64,128} (default 64),
//                  stride dividing block_tokens (default 8), threshold in (0, 1] (default 0.9),
//                  min_prompt_tokens ≥ 0 (default 2048) }
// Errors throw ModelFileError(file, "line N: problem"); N is 1-based, from the YAML node at fault.
// A head pattern with the wrong shape or bad cells is reported with the TSV's own file and line.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "kvcache/geometry.h"
#include "kvcache/sparsity_profile.h"

namespace sparseserve {

struct ModelProfiles {
  std::string name;
  std::string chat_template = "auto";  // "auto" | "chatml" | "llama3"
  kvcache::KvCacheConfig kv_cache;
  std::string default_profile = "dense";  // a key of `profiles`
  // Always holds "dense" (all heads retrieval, no selection, no dynamic prefill). Every profile's
  // roles have shape (n_layers, n_kv_heads) of the model it was loaded for.
  std::map<std::string, kvcache::SparsityProfile> profiles;

  // Throws InvalidArgument "unknown sparsity profile 'x' (known: a, b)" for a name not loaded.
  const kvcache::SparsityProfile& get(std::string_view profile) const;

  // Loads and validates `path` for a model of n_layers layers with n_kv_heads KV heads
  // (both ≥ 1, else InvalidArgument). Throws ModelFileError as described above.
  static ModelProfiles load(const std::string& path, int32_t n_layers, int32_t n_kv_heads);
  // Without a YAML: only `dense`, default dense, chat_template auto, pages 64 / 16.
  static ModelProfiles defaults_for(int32_t n_layers, int32_t n_kv_heads);
  // The YAML conventionally paired with a model: <configs_dir>/<name>.yaml where name is the model
  // file's (or directory's) name lower-cased, without extension and quantization suffix
  // ("SmolLM2-135M-Instruct.Q4_1.gguf" -> "smollm2-135m-instruct"). Empty when there is none.
  static std::string find_for_model(const std::string& model_path, const std::string& configs_dir);
};

}  // namespace sparseserve
