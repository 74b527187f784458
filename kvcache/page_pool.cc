#include "kvcache/page_pool.h"

#include <fmt/format.h>

#include "common/errors.h"

namespace sparseserve::kvcache {

// ref_[p] == 0 exactly when p is on the free stack; free_ holds each free id once, and its capacity
// is num_pages, so release never allocates.
PagePool::PagePool(int32_t num_pages) {
  if (num_pages < 0) throw InvalidArgument(fmt::format("page pool: {} pages", num_pages));
  ref_.assign(static_cast<size_t>(num_pages), 0);
  free_.reserve(static_cast<size_t>(num_pages));
  // Highest id at the bottom: a fresh pool hands out 0, 1, 2, ...
  for (int32_t p = num_pages - 1; p >= 0; --p) free_.push_back(p);
}

std::vector<int32_t> PagePool::allocate(int32_t n) {
  if (!can_allocate(n)) {
    throw InternalError(fmt::format("page pool: allocate({}) with {} free pages", n, num_free()));
  }
  std::vector<int32_t> out(static_cast<size_t>(n));
  for (auto& p : out) {
    p = free_.back();
    free_.pop_back();
    ref_[static_cast<size_t>(p)] = 1;
  }
  return out;
}

void PagePool::retain(int32_t page) {
  if (page < 0 || page >= num_pages() || ref_[static_cast<size_t>(page)] == 0) {
    throw InternalError(fmt::format("page pool: retain of page {}, which is free or unknown", page));
  }
  ++ref_[static_cast<size_t>(page)];
}

// All or nothing: on a bad entry the references already dropped are restored before throwing.
void PagePool::release(std::span<const int32_t> pages) {
  const size_t free_before = free_.size();
  for (size_t i = 0; i < pages.size(); ++i) {
    const int32_t p = pages[i];
    if (p < 0 || p >= num_pages() || ref_[static_cast<size_t>(p)] == 0) {
      for (size_t k = 0; k < i; ++k) ++ref_[static_cast<size_t>(pages[k])];
      free_.resize(free_before);
      throw InternalError(fmt::format("page pool: release of page {}, which is free or unknown", p));
    }
    if (--ref_[static_cast<size_t>(p)] == 0) free_.push_back(p);
  }
}

int32_t PagePool::ref_count(int32_t page) const {
  if (page < 0 || page >= num_pages()) throw InternalError(fmt::format("page pool: unknown page {}", page));
  return ref_[static_cast<size_t>(page)];
}

}  // namespace sparseserve::kvcache
