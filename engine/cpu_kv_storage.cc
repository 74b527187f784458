#include "engine/cpu_kv_storage.h"

#include <algorithm>
#include <cstring>

namespace sparseserve {

CpuKvStorage::CpuKvStorage(int64_t n_layers, int64_t num_pages, int64_t page_tokens, int64_t logical_page_tokens,
                           int64_t head_dim)
    : P_(page_tokens), LP_(logical_page_tokens), D_(head_dim) {
  const auto kv = static_cast<size_t>(num_pages * P_ * D_);
  const auto meta = static_cast<size_t>(num_pages * subpages() * D_);
  for (int64_t l = 0; l < n_layers; ++l) {
    k_.emplace_back(kv);
    v_.emplace_back(kv);
    kmin_.emplace_back(meta);
    kmax_.emplace_back(meta);
  }
}

void CpuKvStorage::write(int64_t layer, int64_t page, int64_t offset, const float* key, const float* value,
                         bool with_metadata) {
  std::memcpy(k(layer, page, offset), key, sizeof(float) * static_cast<size_t>(D_));
  std::memcpy(v(layer, page, offset), value, sizeof(float) * static_cast<size_t>(D_));
  if (!with_metadata) return;
  float* mn = kmin_[layer].data() + (page * subpages() + offset / LP_) * D_;
  float* mx = kmax_[layer].data() + (page * subpages() + offset / LP_) * D_;
  if (offset % LP_ == 0) {
    std::memcpy(mn, key, sizeof(float) * static_cast<size_t>(D_));
    std::memcpy(mx, key, sizeof(float) * static_cast<size_t>(D_));
    return;
  }
  for (int64_t d = 0; d < D_; ++d) {
    mn[d] = std::min(mn[d], key[d]);
    mx[d] = std::max(mx[d], key[d]);
  }
}

size_t CpuKvStorage::bytes() const {
  size_t n = 0;
  for (size_t l = 0; l < k_.size(); ++l) n += (k_[l].size() + v_[l].size() + kmin_[l].size() + kmax_[l].size()) * sizeof(float);
  return n;
}

}  // namespace sparseserve
