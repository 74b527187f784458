#include "engine/dense_kv.h"

#include <algorithm>
#include <cstring>

#include "common/errors.h"
#include "kernels/cpu/attention.h"

namespace sparseserve {

DenseKvCache::DenseKvCache(const ModelConfig& c)
    : row_width_(c.n_kv_heads * c.head_dim), k_(static_cast<size_t>(c.n_layers)), v_(static_cast<size_t>(c.n_layers)) {}

void DenseKvCache::reserve(int64_t tokens) {
  if (tokens <= capacity_) return;
  const int64_t cap = std::max<int64_t>(tokens, std::max<int64_t>(64, capacity_ * 2));
  for (auto* set : {&k_, &v_}) {
    for (auto& layer : *set) layer.resize(static_cast<size_t>(cap * row_width_));
  }
  capacity_ = cap;
}

size_t DenseKvCache::bytes() const { return 2 * k_.size() * static_cast<size_t>(capacity_ * row_width_) * sizeof(float); }

void DenseKvBackend::add_sequence(uint64_t id) {
  check(!seqs_.contains(id), "DenseKvBackend: sequence id already exists");
  seqs_.emplace(id, DenseKvCache(config_));
}

void DenseKvBackend::release(uint64_t id) { seqs_.erase(id); }

int64_t DenseKvBackend::length(uint64_t id) const {
  const auto it = seqs_.find(id);
  check(it != seqs_.end(), "DenseKvBackend: unknown sequence id");
  return it->second.length();
}

void DenseKvBackend::truncate(uint64_t id, int64_t length) {
  DenseKvCache& kv = get(id);
  check(length >= 0 && length <= kv.length(), "DenseKvBackend: truncate beyond the cached length");
  kv.set_length(length);
}

const DenseKvCache& DenseKvBackend::cache(uint64_t id) const {
  const auto it = seqs_.find(id);
  check(it != seqs_.end(), "DenseKvBackend: unknown sequence id");
  return it->second;
}

DenseKvCache& DenseKvBackend::get(uint64_t id) {
  const auto it = seqs_.find(id);
  check(it != seqs_.end(), "DenseKvBackend: unknown sequence id");
  return it->second;
}

void DenseKvBackend::begin_step(std::span<const ForwardSeq> batch) {
  for (const ForwardSeq& s : batch) check(get(s.id).length() == s.start, "DenseKvBackend: step start differs from the cached length");
  for (const ForwardSeq& s : batch) get(s.id).reserve(s.start + static_cast<int64_t>(s.tokens.size()));
}

void DenseKvBackend::attend(int64_t layer, std::span<const ForwardSeq> batch, const float* qkv, int64_t qkv_stride,
                            float* out) {
  const ModelConfig& c = config_;
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  int64_t r = 0;
  for (const ForwardSeq& s : batch) {
    DenseKvCache& kv = get(s.id);
    const auto n = static_cast<int64_t>(s.tokens.size());
    float* kc = kv.k(layer);
    float* vc = kv.v(layer);
    for (int64_t i = 0; i < n; ++i) {
      const float* src = qkv + (r + i) * qkv_stride;
      std::memcpy(kc + (s.start + i) * kv_dim, src + q_dim, sizeof(float) * static_cast<size_t>(kv_dim));
      std::memcpy(vc + (s.start + i) * kv_dim, src + q_dim + kv_dim, sizeof(float) * static_cast<size_t>(kv_dim));
    }
    kernels::cpu::attention_causal(qkv + r * qkv_stride, qkv_stride, kc, vc, out + r * q_dim, n, s.start, c.n_heads,
                                   c.n_kv_heads, c.head_dim, numerics_);
    r += n;
  }
}

void DenseKvBackend::end_step(std::span<const ForwardSeq> batch) {
  for (const ForwardSeq& s : batch) get(s.id).set_length(s.start + static_cast<int64_t>(s.tokens.size()));
}

}  // namespace sparseserve
