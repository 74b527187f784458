#include "engine/cpu_kv_storage.h"

#include <algorithm>
#include <cstring>

namespace sparseserve {

CpuKvStorage::CpuKvStorage(int64_t num_pages, int64_t page_tokens, int64_t logical_page_tokens, int64_t head_dim)
    : P_(page_tokens),
      LP_(logical_page_tokens),
      D_(head_dim),
      kv_elems_(static_cast<size_t>(num_pages * P_ * D_)),
      meta_elems_(static_cast<size_t>(num_pages * subpages() * D_)),
      k_(new float[kv_elems_]),
      v_(new float[kv_elems_]),
      kmin_(new float[meta_elems_]),
      kmax_(new float[meta_elems_]) {}

void CpuKvStorage::write(int64_t page, int64_t offset, const float* key, const float* value, bool with_metadata) {
  std::memcpy(k(page, offset), key, sizeof(float) * static_cast<size_t>(D_));
  std::memcpy(v(page, offset), value, sizeof(float) * static_cast<size_t>(D_));
  if (!with_metadata) return;
  float* mn = kmin_.get() + (page * subpages() + offset / LP_) * D_;
  float* mx = kmax_.get() + (page * subpages() + offset / LP_) * D_;
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

void CpuKvStorage::copy_pages(std::span<const kernels::cpu::PageRangeCopy> copies) {
  kernels::cpu::copy_page_ranges(k_.get(), v_.get(), P_, D_, copies);
}

size_t CpuKvStorage::bytes() const { return 2 * (kv_elems_ + meta_elems_) * sizeof(float); }

}  // namespace sparseserve
