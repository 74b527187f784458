// Single-sequence generation on the CPU engine (the `generate` command and reference tests):
// prefill the prompt, then sample token by token until a stop token or max_tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/cpu_forward.h"
#include "engine/paged_kv.h"
#include "engine/sampling_params.h"
#include "kvcache/geometry.h"
#include "kvcache/sparsity_profile.h"

namespace sparseserve {

struct GenerateOptions {
  SamplingParams sampling;
  int64_t max_tokens = 256;
  std::vector<int32_t> stop_ids;  // in addition to the model's EOS ids unless ignore_eos
  bool ignore_eos = false;
  int64_t prefill_chunk = 512;    // prompt tokens per forward call
  // Sparsity profile (nullptr: dense) and page geometry of the paged KV cache the run uses.
  const kvcache::SparsityProfile* profile = nullptr;
  kvcache::KvCacheConfig kv_cache;
};

struct GenerateResult {
  std::vector<int32_t> tokens;     // generated ids (the stop token excluded)
  std::string text;                // detokenized, special tokens skipped
  std::string finish_reason;       // "stop" | "length"
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  int64_t kv_pages_retrieval = 0;  // pages held at the end, per role (one page = one lane)
  int64_t kv_pages_streaming = 0;
  SelectionStats selection;        // decode page selection figures
};

// on_text receives each piece of text as soon as it is complete UTF-8 (may be empty: not called).
// Throws InvalidArgument for an empty prompt, a prompt that leaves no room in the context, or bad
// sampling parameters.
GenerateResult generate(CpuForward& fwd, std::span<const int32_t> prompt, const GenerateOptions& opts,
                        const std::function<void(std::string_view)>& on_text = {});

}  // namespace sparseserve
