// Per-request sampling parameters, with the conventions of vLLM / the OpenAI API.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace sparseserve {

struct SamplingParams {
  float temperature = 1.0f;          // 0 = greedy; see sampling_temperature()
  float top_p = 1.0f;                // (0, 1]
  int32_t top_k = 0;                 // 0 or -1 = off
  float min_p = 0.0f;                // [0, 1]: drop tokens with p < min_p · p_max
  float presence_penalty = 0.0f;     // [-2, 2], on generated tokens (OpenAI)
  float frequency_penalty = 0.0f;    // [-2, 2], on generated tokens (OpenAI)
  float repetition_penalty = 1.0f;   // > 0, on prompt and generated tokens (HF/vLLM)
  // Added to the logit of each id, clamped to ±kMaxLogitBias (as vLLM clamps it, infinities too).
  std::vector<std::pair<int32_t, float>> logit_bias;
  std::optional<uint64_t> seed;      // same seed and input -> same output

  // Throws InvalidArgument naming the parameter when a value is out of range (vocab_size bounds
  // the logit_bias ids).
  void validate(int64_t vocab_size) const;

  // The temperature both samplers (engine/sampler.h, kernels/cuda/sampling.h) draw at: 0, or at least
  // kMinTemperature. vLLM's floor: a smaller one scales logits past what float math holds (the
  // GPU's 1/T of a denormal T is +inf, and its draw then NaN).
  static constexpr float kMinTemperature = 0.01f;
  static constexpr float kMaxLogitBias = 100.0f;
  float sampling_temperature() const {
    return temperature > 0.0f && temperature < kMinTemperature ? kMinTemperature : temperature;
  }
};

}  // namespace sparseserve
