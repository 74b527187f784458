// A pool of page ids [0, num_pages) with reference counts. One page is `page_tokens` tokens of one
// head slot in every layer; the executor owns the bytes. O(1) per page; never fails silently.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sparseserve::kvcache {

class PagePool {
 public:
  explicit PagePool(int32_t num_pages);

  int32_t num_pages() const { return static_cast<int32_t>(ref_.size()); }
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t num_used() const { return num_pages() - num_free(); }

  bool can_allocate(int32_t n) const { return n >= 0 && n <= num_free(); }
  // Takes n free pages (reference count 1 each). Precondition: can_allocate(n), else InternalError.
  std::vector<int32_t> allocate(int32_t n);
  // Adds a reference to an allocated page (sharing). InternalError for a free or unknown page.
  void retain(int32_t page);
  // Drops one reference per listed page; a page returns to the free list at zero.
  // InternalError for a free or unknown page (a double release).
  void release(std::span<const int32_t> pages);
  int32_t ref_count(int32_t page) const;

 private:
  std::vector<int32_t> ref_;
  std::vector<int32_t> free_;  // stack of free ids
};

}  // namespace sparseserve::kvcache
