// Bytes of the paged KV cache on the CPU backend (page model: kvcache/README.md: one page = one
// lane, i.e. one (layer, KV head), of page_tokens tokens):
//   K, V:        [num_pages][page_tokens][head_dim] fp32 (K after RoPE)
//   kmin, kmax:  [num_pages][page_tokens / logical_page_tokens][head_dim] fp32, element-wise min/max
//                of K over each logical sub-page (maintained for retrieval lanes)
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "kernels/cpu/page_copy.h"

namespace sparseserve {

class CpuKvStorage {
 public:
  CpuKvStorage(int64_t num_pages, int64_t page_tokens, int64_t logical_page_tokens, int64_t head_dim);

  int64_t page_tokens() const { return P_; }
  int64_t logical_page_tokens() const { return LP_; }
  int64_t head_dim() const { return D_; }
  int64_t subpages() const { return P_ / LP_; }

  // Token `offset` of `page`.
  float* k(int64_t page, int64_t offset = 0) { return k_.get() + (page * P_ + offset) * D_; }
  float* v(int64_t page, int64_t offset = 0) { return v_.get() + (page * P_ + offset) * D_; }
  // Sub-page rows of `page`: [subpages][head_dim].
  const float* kmin(int64_t page) const { return kmin_.get() + page * subpages() * D_; }
  const float* kmax(int64_t page) const { return kmax_.get() + page * subpages() * D_; }

  // Writes one token's K and V at (page, offset); with_metadata also folds K into its sub-page's
  // min/max (the first token of a sub-page resets them: pages are filled in order).
  void write(int64_t page, int64_t offset, const float* key, const float* value, bool with_metadata);
  // K and V token ranges copied between pages (kernels/cpu/page_copy.h; not the metadata: copies are
  // of streaming pages). Ranges are the caller's to check.
  void copy_pages(std::span<const kernels::cpu::PageRangeCopy> copies);

  size_t bytes() const;

 private:
  int64_t P_, LP_, D_;
  // Left uninitialised (pages are written before they are read), so a large budget costs no start-up
  // time and only the pages in use become resident.
  size_t kv_elems_, meta_elems_;
  std::unique_ptr<float[]> k_, v_, kmin_, kmax_;
};

}  // namespace sparseserve
