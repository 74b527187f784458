// RoPE angular frequencies for a model: θ^(-2i/rope_dim), then the model's scaling
// (linear, llama3's frequency-dependent smoothing, or GGUF's per-pair rope_freqs factors).
#pragma once

#include <vector>

#include "engine/model_config.h"

namespace sparseserve {

// inv_freq[i] for i < rope_dim/2. freq_factors (may be empty) divides each frequency (GGUF rope_freqs).
std::vector<float> rope_inv_freq(const ModelConfig& config, const std::vector<float>& freq_factors);

}  // namespace sparseserve
