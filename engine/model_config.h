// Llama-family model hyper-parameters, read from GGUF metadata or a Hugging Face config.json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparseserve {

// How RoPE pairs the dimensions of a head.
//  - kInterleaved: pairs (2i, 2i+1): GGUF "llama" tensors (llama.cpp permutes HF's Q/K at conversion).
//  - kHalf: pairs (i, i + d/2): Hugging Face checkpoints, GGUF qwen2 (NeoX style).
enum class RopeLayout { kInterleaved, kHalf };

struct RopeScaling {
  enum class Kind { kNone, kLinear, kLlama3 } kind = Kind::kNone;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;       // llama3
  float high_freq_factor = 4.0f;      // llama3
  int64_t original_max_position = 8192;  // llama3
};

struct ModelConfig {
  std::string architecture;  // "llama", "mistral", "qwen2"
  std::string name;
  int64_t n_layers = 0;
  int64_t hidden = 0;        // embedding width
  int64_t n_heads = 0;       // query heads
  int64_t n_kv_heads = 0;    // key/value heads (GQA)
  int64_t head_dim = 0;
  int64_t intermediate = 0;  // MLP width
  int64_t vocab_size = 0;
  int64_t max_context = 0;   // tokens
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  int64_t rope_dim = 0;      // rotated dims per head (== head_dim for the Llama family)
  RopeLayout rope_layout = RopeLayout::kHalf;
  RopeScaling rope_scaling;
  bool tied_embeddings = false;
  bool qkv_bias = false;
  // Token ids the model declares (-1 when absent).
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;

  // Throws ModelFileError(source, ...) when a field is missing or inconsistent.
  void validate(const std::string& source) const;
};

}  // namespace sparseserve
