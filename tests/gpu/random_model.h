// A Llama-family model with random fp32 weights for the GPU engine tests (CudaForward and the engine
// over it, each against the CPU forward pass): rows scaled by 1/√cols, and a byte-level tokenizer of
// 256 tokens (the forward pass never reads it; the engine detokenizes with it, so a model served by
// the engine keeps vocab ≤ 256).
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "engine/model.h"
#include "kernels/cpu/ggml_types.h"
#include "tests/engine/synthetic_gguf.h"

namespace sparseserve::gpu_test {

struct ModelShape {
  int64_t layers, hidden, heads, kv_heads, head_dim, intermediate, vocab;
  RopeLayout rope;
  bool bias;
};

struct RandomModel {
  std::vector<std::vector<float>> store;  // the weights' bytes
  std::unique_ptr<Model> model;

  RandomModel(const ModelShape& s, std::mt19937_64& rng) {
    GgufImage g;
    g.string("tokenizer.ggml.model", "gpt2");
    g.strings("tokenizer.ggml.tokens", byte_level_alphabet());
    g.strings("tokenizer.ggml.merges", {});
    model = std::make_unique<Model>(Model{.path = "random", .format = "gguf", .config = {}, .weights = {},
                                          .tokenizer = g.load("random.gguf"), .chat_template = std::nullopt,
                                          .tensor_types = {}, .storage = nullptr});
    ModelConfig& c = model->config;
    c.architecture = "llama";
    c.n_layers = s.layers, c.hidden = s.hidden, c.n_heads = s.heads, c.n_kv_heads = s.kv_heads;
    c.head_dim = s.head_dim, c.intermediate = s.intermediate, c.vocab_size = s.vocab, c.max_context = 4096;
    c.rope_dim = s.head_dim, c.rope_layout = s.rope, c.qkv_bias = s.bias, c.rope_theta = 10000.0f;
    ModelWeights& w = model->weights;
    w.embed = matrix(s.vocab, s.hidden, rng, 1.0f);
    w.lm_head = matrix(s.vocab, s.hidden, rng, 1.0f / std::sqrt(float(s.hidden)));
    w.final_norm = vec(s.hidden, rng, 0.8f, 1.2f);
    const int64_t q = s.heads * s.head_dim, kv = s.kv_heads * s.head_dim;
    for (int64_t l = 0; l < s.layers; ++l) {
      LayerWeights lw;
      lw.attn_norm = vec(s.hidden, rng, 0.8f, 1.2f);
      lw.wq = matrix(q, s.hidden, rng, 2.0f / std::sqrt(float(s.hidden)));
      lw.wk = matrix(kv, s.hidden, rng, 2.0f / std::sqrt(float(s.hidden)));
      lw.wv = matrix(kv, s.hidden, rng, 1.0f / std::sqrt(float(s.hidden)));
      if (s.bias) lw.bq = vec(q, rng, -0.2f, 0.2f), lw.bk = vec(kv, rng, -0.2f, 0.2f), lw.bv = vec(kv, rng, -0.2f, 0.2f);
      lw.wo = matrix(s.hidden, q, rng, 1.0f / std::sqrt(float(q)));
      lw.ffn_norm = vec(s.hidden, rng, 0.8f, 1.2f);
      lw.w_gate = matrix(s.intermediate, s.hidden, rng, 1.0f / std::sqrt(float(s.hidden)));
      lw.w_up = matrix(s.intermediate, s.hidden, rng, 1.0f / std::sqrt(float(s.hidden)));
      lw.w_down = matrix(s.hidden, s.intermediate, rng, 1.0f / std::sqrt(float(s.intermediate)));
      w.layers.push_back(std::move(lw));
    }
  }

  kernels::cpu::WeightMatrix matrix(int64_t rows, int64_t cols, std::mt19937_64& rng, float scale) {
    std::vector<float>& d = store.emplace_back(static_cast<size_t>(rows * cols));
    std::normal_distribution<float> n(0.0f, scale);
    for (float& x : d) x = n(rng);
    return {kernels::GgmlType::F32, rows, cols, reinterpret_cast<const std::byte*>(d.data()),
            static_cast<size_t>(cols) * sizeof(float)};
  }
  static std::vector<float> vec(int64_t n, std::mt19937_64& rng, float lo, float hi) {
    std::vector<float> v(static_cast<size_t>(n));
    std::uniform_real_distribution<float> u(lo, hi);
    for (float& x : v) x = u(rng);
    return v;
  }
};

}  // namespace sparseserve::gpu_test
