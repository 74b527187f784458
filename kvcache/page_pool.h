// A pool of page ids [0, num_pages) with reference counts. One page is `page_tokens` tokens of one
// lane (kvcache/README.md); the executor owns the bytes. Never fails silently.
//
// Allocation order: allocate(n) hands out the n lowest free ids, ascending. A sequence's grow takes
// its pages in one call and gives each lane a consecutive share (SequenceKv::grow), so a lane's
// pages lie next to each other in the pool wherever the free ids are contiguous: a fresh pool, or
// the gap a finished sequence left. The paged decode reads such runs faster than scattered pages
// (H200, batch 16, 128K tokens: +1-1.4%; bench/RESULTS.md §3). Cost: O(n + num_pages / 4096) per
// allocate (a two-level bitmap of free ids), O(n) per release.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sparseserve::kvcache {

class PagePool {
 public:
  explicit PagePool(int32_t num_pages);

  int32_t num_pages() const { return static_cast<int32_t>(ref_.size()); }
  int32_t num_free() const { return num_free_; }
  int32_t num_used() const { return num_pages() - num_free(); }

  bool can_allocate(int32_t n) const { return n >= 0 && n <= num_free(); }
  // Takes the n lowest free pages, ascending (reference count 1 each). Precondition: can_allocate(n),
  // else InternalError.
  std::vector<int32_t> allocate(int32_t n);
  // Adds a reference to an allocated page (sharing). InternalError for a free or unknown page.
  void retain(int32_t page);
  // Drops one reference per listed page; a page becomes free at zero. All or nothing: InternalError
  // for a free or unknown page (a double release), and then no reference is dropped.
  void release(std::span<const int32_t> pages);
  int32_t ref_count(int32_t page) const;

 private:
  void mark_free(int32_t page);

  std::vector<int32_t> ref_;
  // Free ids: bit p % 64 of free_[p / 64]; bit w % 64 of nonempty_[w / 64] says free_[w] != 0.
  std::vector<uint64_t> free_;
  std::vector<uint64_t> nonempty_;
  int32_t num_free_ = 0;
};

}  // namespace sparseserve::kvcache
