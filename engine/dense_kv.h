// Dense contiguous KV backend for the CPU engine: per sequence and layer, K and V as
// [capacity, n_kv_heads, head_dim] fp32 (K after RoPE), row j = position j. Every head attends to
// its whole causal history. (Reference for the paged backend; backs tests and tools.)
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "engine/kv_backend.h"
#include "engine/model_config.h"
#include "kernels/cpu/numerics.h"

namespace sparseserve {

class DenseKvCache {
 public:
  explicit DenseKvCache(const ModelConfig& config);

  int64_t length() const { return length_; }
  void reserve(int64_t tokens);  // amortised doubling; never shrinks
  float* k(int64_t layer) { return k_[static_cast<size_t>(layer)].data(); }
  float* v(int64_t layer) { return v_[static_cast<size_t>(layer)].data(); }
  const float* k(int64_t layer) const { return k_[static_cast<size_t>(layer)].data(); }
  const float* v(int64_t layer) const { return v_[static_cast<size_t>(layer)].data(); }
  void set_length(int64_t n) { length_ = n; }
  size_t bytes() const;

 private:
  int64_t row_width_;
  int64_t capacity_ = 0;
  int64_t length_ = 0;
  std::vector<std::vector<float>> k_, v_;
};

class DenseKvBackend final : public KvBackend {
 public:
  explicit DenseKvBackend(const ModelConfig& config, kernels::cpu::Numerics numerics = kernels::cpu::Numerics::kFast)
      : config_(config), numerics_(numerics) {}

  void add_sequence(uint64_t id);  // InternalError when it exists
  void release(uint64_t id);
  int64_t length(uint64_t id) const;
  // Forgets the tokens after `length` (0 ≤ length ≤ length(id), else InternalError): the next step
  // starts there and overwrites them.
  void truncate(uint64_t id, int64_t length);
  const DenseKvCache& cache(uint64_t id) const;

  void begin_step(std::span<const ForwardSeq> batch) override;
  void attend(int64_t layer, std::span<const ForwardSeq> batch, const float* qkv, int64_t qkv_stride,
              float* out) override;
  void end_step(std::span<const ForwardSeq> batch) override;

 private:
  DenseKvCache& get(uint64_t id);
  ModelConfig config_;
  kernels::cpu::Numerics numerics_;
  std::unordered_map<uint64_t, DenseKvCache> seqs_;
};

}  // namespace sparseserve
