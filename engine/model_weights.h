// Weights of a Llama-family model bound to their stored bytes (mapped GGUF or safetensors):
// linear weights stay in their file type (quantized or 16-bit); norms and biases are widened to fp32.
#pragma once

#include <cstddef>
#include <vector>

#include "kernels/cpu/matmul.h"

namespace sparseserve {

struct LayerWeights {
  std::vector<float> attn_norm;  // [hidden]
  kernels::cpu::WeightMatrix wq;  // [n_heads*head_dim, hidden]
  kernels::cpu::WeightMatrix wk;  // [n_kv_heads*head_dim, hidden]
  kernels::cpu::WeightMatrix wv;  // [n_kv_heads*head_dim, hidden]
  std::vector<float> bq, bk, bv;  // empty unless the model has QKV bias
  kernels::cpu::WeightMatrix wo;  // [hidden, n_heads*head_dim]
  std::vector<float> ffn_norm;    // [hidden]
  kernels::cpu::WeightMatrix w_gate;  // [intermediate, hidden]
  kernels::cpu::WeightMatrix w_up;    // [intermediate, hidden]
  kernels::cpu::WeightMatrix w_down;  // [hidden, intermediate]
};

struct ModelWeights {
  kernels::cpu::WeightMatrix embed;    // [vocab, hidden]
  kernels::cpu::WeightMatrix lm_head;  // [vocab, hidden]; equals embed when tied
  std::vector<float> final_norm;       // [hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> rope_freq_factors;  // GGUF rope_freqs (llama3): divides inv_freq; may be empty
  size_t bytes = 0;                      // stored bytes of all bound tensors
};

}  // namespace sparseserve
