// Bytes of the paged KV cache on the CPU backend (page model: kvcache/README.md: one page = one
// lane, i.e. one (layer, KV head), of page_tokens tokens):
//   K, V:        [num_pages][page_tokens][head_dim] fp32 (K after RoPE)
//   kmin, kmax:  [num_pages][page_tokens / logical_page_tokens][head_dim] fp32, element-wise min/max
//                of K over each logical sub-page (maintained for retrieval lanes)
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

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
  // Copies K and V of tokens [offset, offset + tokens) of page src into page dst (not the metadata:
  // copies are of streaming pages); src < 0 zero-fills them.
  void copy_page(int64_t src, int64_t dst, int64_t offset, int64_t tokens);

  size_t bytes() const;

 private:
  int64_t P_, LP_, D_;
  // Left uninitialised (pages are written before they are read), so a large budget costs no start-up
  // time and only the pages in use become resident.
  size_t kv_elems_, meta_elems_;
  std::unique_ptr<float[]> k_, v_, kmin_, kmax_;
};

}  // namespace sparseserve
