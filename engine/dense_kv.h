// Contiguous per-sequence KV storage for the CPU engine: per layer, K and V as
// [capacity, n_kv_heads, head_dim] fp32 (K after RoPE). Row j holds position j.
// (The paged, role-split cache of kvcache/ replaces this for serving; this one backs `generate`
// and the reference tests.)
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model_config.h"

namespace sparseserve {

class DenseKvCache {
 public:
  explicit DenseKvCache(const ModelConfig& config);

  int64_t length() const { return length_; }       // tokens stored
  int64_t row_width() const { return row_width_; }  // n_kv_heads * head_dim
  // Makes room for `tokens` positions (amortised doubling); never shrinks.
  void reserve(int64_t tokens);
  float* k(int64_t layer) { return k_[static_cast<size_t>(layer)].data(); }
  float* v(int64_t layer) { return v_[static_cast<size_t>(layer)].data(); }
  void set_length(int64_t n) { length_ = n; }
  // Drops everything after the first n tokens (n ≤ length()).
  void truncate(int64_t n);
  size_t bytes() const;  // bytes allocated

 private:
  int64_t row_width_;
  int64_t capacity_ = 0;
  int64_t length_ = 0;
  std::vector<std::vector<float>> k_, v_;
};

}  // namespace sparseserve
