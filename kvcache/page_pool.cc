#include "kvcache/page_pool.h"

#include <fmt/format.h>

#include <bit>

#include "common/errors.h"

namespace sparseserve::kvcache {

// ref_[p] == 0 exactly when bit p of free_ is set; nonempty_ mirrors which words of free_ have a bit.
PagePool::PagePool(int32_t num_pages) {
  if (num_pages < 0) throw InvalidArgument(fmt::format("page pool: {} pages", num_pages));
  ref_.assign(static_cast<size_t>(num_pages), 0);
  const auto words = (static_cast<size_t>(num_pages) + 63) / 64;
  free_.assign(words, 0);
  nonempty_.assign((words + 63) / 64, 0);
  for (int32_t p = 0; p < num_pages; ++p) mark_free(p);
}

void PagePool::mark_free(int32_t page) {
  const auto w = static_cast<size_t>(page) / 64;
  free_[w] |= uint64_t{1} << (page % 64);
  nonempty_[w / 64] |= uint64_t{1} << (w % 64);
  ++num_free_;
}

std::vector<int32_t> PagePool::allocate(int32_t n) {
  if (!can_allocate(n)) {
    throw InternalError(fmt::format("page pool: allocate({}) with {} free pages", n, num_free()));
  }
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n));
  // Words with free ids in ascending order (through nonempty_), their ids lowest bit first.
  for (size_t s = 0; out.size() < static_cast<size_t>(n); ++s) {
    uint64_t words = nonempty_[s];
    while (words != 0 && out.size() < static_cast<size_t>(n)) {
      const size_t w = s * 64 + static_cast<size_t>(std::countr_zero(words));
      uint64_t bits = free_[w];
      while (bits != 0 && out.size() < static_cast<size_t>(n)) {
        const auto p = static_cast<int32_t>(w * 64 + static_cast<size_t>(std::countr_zero(bits)));
        bits &= bits - 1;
        ref_[static_cast<size_t>(p)] = 1;
        out.push_back(p);
      }
      free_[w] = bits;
      if (bits == 0) nonempty_[s] &= ~(uint64_t{1} << (w % 64));
      words &= words - 1;
    }
  }
  num_free_ -= n;
  return out;
}

void PagePool::retain(int32_t page) {
  if (page < 0 || page >= num_pages() || ref_[static_cast<size_t>(page)] == 0) {
    throw InternalError(fmt::format("page pool: retain of page {}, which is free or unknown", page));
  }
  ++ref_[static_cast<size_t>(page)];
}

// All or nothing: on a bad entry the references already dropped are restored before throwing; pages
// become free only once every entry has been checked.
void PagePool::release(std::span<const int32_t> pages) {
  for (size_t i = 0; i < pages.size(); ++i) {
    const int32_t p = pages[i];
    if (p < 0 || p >= num_pages() || ref_[static_cast<size_t>(p)] == 0) {
      for (size_t k = 0; k < i; ++k) ++ref_[static_cast<size_t>(pages[k])];
      throw InternalError(fmt::format("page pool: release of page {}, which is free or unknown", p));
    }
    --ref_[static_cast<size_t>(p)];
  }
  for (const int32_t p : pages) {
    // A page listed twice reaches zero once; its second entry finds its bit already set.
    const auto w = static_cast<size_t>(p) / 64;
    if (ref_[static_cast<size_t>(p)] == 0 && (free_[w] & (uint64_t{1} << (p % 64))) == 0) mark_free(p);
  }
}

int32_t PagePool::ref_count(int32_t page) const {
  if (page < 0 || page >= num_pages()) throw InternalError(fmt::format("page pool: unknown page {}", page));
  return ref_[static_cast<size_t>(page)];
}

}  // namespace sparseserve::kvcache
