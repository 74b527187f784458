// Per-request sampling parameters, with the conventions of vLLM / the OpenAI API.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace sparseserve {

struct SamplingParams {
  float temperature = 1.0f;          // 0 = greedy
  float top_p = 1.0f;                // (0, 1]
  int32_t top_k = 0;                 // 0 or -1 = off
  float min_p = 0.0f;                // [0, 1]: drop tokens with p < min_p · p_max
  float presence_penalty = 0.0f;     // [-2, 2], on generated tokens (OpenAI)
  float frequency_penalty = 0.0f;    // [-2, 2], on generated tokens (OpenAI)
  float repetition_penalty = 1.0f;   // > 0, on prompt and generated tokens (HF/vLLM)
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to the logit of each id
  std::optional<uint64_t> seed;      // same seed and input -> same output

  // Throws InvalidArgument naming the parameter when a value is out of range (vocab_size bounds
  // the logit_bias ids).
  void validate(int64_t vocab_size) const;
};

}  // namespace sparseserve
