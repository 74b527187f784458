#include "engine/dense_kv.h"

#include <algorithm>

#include "common/errors.h"

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

void DenseKvCache::truncate(int64_t n) {
  check(n >= 0 && n <= length_, "DenseKvCache::truncate beyond the stored length");
  length_ = n;
}

size_t DenseKvCache::bytes() const { return 2 * k_.size() * static_cast<size_t>(capacity_ * row_width_) * sizeof(float); }

}  // namespace sparseserve
