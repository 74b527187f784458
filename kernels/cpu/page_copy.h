// Copies of token ranges between pages of a paged K/V pool (K and V each [num_pages][page_tokens]
// [head_dim], any element type): the CPU backend's own (CpuKvStorage, fp32) and the twin of
// kernels/cuda/page_copy.h (bf16). The prefix cache copies streaming lanes' pages this way
// (KvCacheManager::take_copies).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>

namespace sparseserve::kernels::cpu {

// Tokens [offset, offset + tokens) of page src, K and V, into the same tokens of page dst; src < 0
// zero-fills them. A list of copies is applied in order (the GPU applies them all at once, so no
// copy may read a page another one writes).
struct PageRangeCopy {
  int32_t src = -1;
  int32_t dst = -1;
  int32_t offset = 0;
  int32_t tokens = 0;
};

// Preconditions (unchecked here: the callers check the ranges): 0 ≤ offset, offset + tokens ≤
// page_tokens, src and dst below the pool's page count.
template <class T>
void copy_page_ranges(T* k, T* v, int64_t page_tokens, int64_t head_dim, std::span<const PageRangeCopy> copies) {
  for (const PageRangeCopy& c : copies) {
    const int64_t to = (int64_t{c.dst} * page_tokens + c.offset) * head_dim;
    const int64_t n = int64_t{c.tokens} * head_dim;
    if (c.src < 0) {
      std::fill_n(k + to, n, T{});
      std::fill_n(v + to, n, T{});
      continue;
    }
    const int64_t from = (int64_t{c.src} * page_tokens + c.offset) * head_dim;
    std::copy_n(k + from, n, k + to);
    std::copy_n(v + from, n, v + to);
  }
}

}  // namespace sparseserve::kernels::cpu
