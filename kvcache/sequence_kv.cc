#include "kvcache/sequence_kv.h"

#include <utility>

#include <fmt/format.h>

#include "common/errors.h"

namespace sparseserve::kvcache {

// Invariants: retrieval_[s].size() == ceil(length_ / P) for every slot (one page per block);
// streaming_[s].size() == geometry_->pages_for_length(length_) (index order of locate(): pages are
// appended when a block first touches a new index, then reused as the ring wraps).

namespace {
int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

int64_t checked_mul(int64_t a, int64_t b) {
  int64_t out = 0;
  if (__builtin_mul_overflow(a, b, &out)) throw InternalError("SequenceKv: page count overflows");
  return out;
}
}  // namespace

SequenceKv::SequenceKv(int32_t page_tokens, int32_t retrieval_slots, int32_t streaming_slots,
                       std::optional<StreamingGeometry> streaming)
    : page_tokens_(page_tokens), geometry_(std::move(streaming)) {
  check(page_tokens >= 1, "SequenceKv: page_tokens must be positive");
  check(retrieval_slots >= 0 && streaming_slots >= 0, "SequenceKv: negative slot count");
  check(streaming_slots == 0 || geometry_.has_value(), "SequenceKv: streaming slots without a streaming geometry");
  check(!geometry_ || geometry_->page_tokens() == page_tokens, "SequenceKv: streaming geometry has another page size");
  retrieval_.resize(static_cast<size_t>(retrieval_slots));
  streaming_.resize(static_cast<size_t>(streaming_slots));
}

int32_t SequenceKv::pages_needed(int64_t new_len) const {
  return new_len <= length_ ? 0 : pages_between(length_, new_len);
}

int32_t SequenceKv::pages_between(int64_t from_len, int64_t to_len) const {
  check(0 <= from_len && from_len <= to_len, "SequenceKv::pages_between: lengths out of order");
  int64_t n = checked_mul(retrieval_slots(), ceil_div(to_len, page_tokens_) - ceil_div(from_len, page_tokens_));
  if (streaming_slots() > 0) {
    n += checked_mul(streaming_slots(), geometry_->pages_for_length(to_len) - geometry_->pages_for_length(from_len));
  }
  if (n > INT32_MAX) throw InternalError(fmt::format("SequenceKv: growing to {} tokens needs {} pages", to_len, n));
  return static_cast<int32_t>(n);
}

void SequenceKv::grow(int64_t new_len, PagePool& pool) {
  if (new_len < length_) {
    throw InternalError(fmt::format("SequenceKv::grow to {} tokens below the current {}", new_len, length_));
  }
  const int32_t need = pages_needed(new_len);
  if (!pool.can_allocate(need)) {
    throw InternalError(fmt::format("SequenceKv::grow to {} tokens needs {} pages, the pool has {}", new_len, need,
                                    pool.num_free()));
  }
  const auto blocks = static_cast<size_t>(ceil_div(new_len, page_tokens_));
  const auto ring = static_cast<size_t>(streaming_.empty() ? 0 : geometry_->pages_for_length(new_len));
  size_t missing = 0;
  for (const auto& t : retrieval_) missing += blocks - t.size();
  for (const auto& t : streaming_) missing += ring - t.size();
  check(missing == static_cast<size_t>(need), "SequenceKv::grow: pages_needed disagrees with the tables");
  // Reserve first: nothing below can throw once pages have left the pool.
  for (auto& t : retrieval_) t.reserve(blocks);
  for (auto& t : streaming_) t.reserve(ring);
  const std::vector<int32_t> pages = pool.allocate(need);
  auto next = pages.begin();
  for (auto& t : retrieval_) {
    while (t.size() < blocks) t.push_back(*next++);
  }
  for (auto& t : streaming_) {
    while (t.size() < ring) t.push_back(*next++);
  }
  length_ = new_len;
}

void SequenceKv::adopt(std::span<const std::vector<int32_t>> blocks, PagePool& pool) {
  check(length_ == 0, "SequenceKv::adopt: the sequence is not empty");
  for (const auto& b : blocks) check(b.size() == retrieval_.size(), "SequenceKv::adopt: a block without one page per slot");
  const int64_t len = static_cast<int64_t>(blocks.size()) * page_tokens_;
  const auto ring = static_cast<size_t>(streaming_.empty() ? 0 : geometry_->pages_for_length(len));
  const auto fresh = static_cast<int32_t>(checked_mul(streaming_slots(), static_cast<int64_t>(ring)));
  check(pool.can_allocate(fresh), "SequenceKv::adopt: the pool lacks the streaming pages");
  for (auto& t : retrieval_) t.reserve(blocks.size());
  for (auto& t : streaming_) t.reserve(ring);
  std::vector<int32_t> taken;
  try {
    for (const auto& b : blocks) {
      for (const int32_t page : b) {
        pool.retain(page);
        taken.push_back(page);
      }
    }
  } catch (...) {
    pool.release(taken);
    throw;
  }
  for (const auto& b : blocks) {
    for (size_t slot = 0; slot < b.size(); ++slot) retrieval_[slot].push_back(b[slot]);
  }
  const std::vector<int32_t> pages = pool.allocate(fresh);
  auto next = pages.begin();
  for (auto& t : streaming_) {
    t.assign(next, next + static_cast<std::ptrdiff_t>(ring));
    next += static_cast<std::ptrdiff_t>(ring);
  }
  length_ = len;
}

void SequenceKv::release(PagePool& pool) {
  std::vector<int32_t> all;
  all.reserve(static_cast<size_t>(pages_held(HeadRole::kRetrieval) + pages_held(HeadRole::kStreaming)));
  for (const auto* tables : {&retrieval_, &streaming_}) {
    for (const auto& t : *tables) all.insert(all.end(), t.begin(), t.end());
  }
  pool.release(all);
  for (auto& t : retrieval_) t.clear();
  for (auto& t : streaming_) t.clear();
  length_ = 0;
}

int32_t SequenceKv::pages_held(HeadRole role) const {
  const auto& tables = role == HeadRole::kRetrieval ? retrieval_ : streaming_;
  size_t n = 0;
  for (const auto& t : tables) n += t.size();
  return static_cast<int32_t>(n);
}

}  // namespace sparseserve::kvcache
