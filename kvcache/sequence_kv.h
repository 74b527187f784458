// Page tables of one sequence: per retrieval slot a growing block table, per streaming slot a
// constant set of sink + ring pages (kvcache/README.md). Host-only bookkeeping.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "kvcache/geometry.h"
#include "kvcache/head_roles.h"
#include "kvcache/page_pool.h"

namespace sparseserve::kvcache {

class SequenceKv {
 public:
  // retrieval_slots / streaming_slots from HeadRoles::slots(); streaming may be absent (dense).
  // InternalError when streaming_slots > 0 without a geometry of the same page_tokens.
  SequenceKv(int32_t page_tokens, int32_t retrieval_slots, int32_t streaming_slots,
             std::optional<StreamingGeometry> streaming);

  int64_t length() const { return length_; }
  // Pages that growing to new_len tokens would take from the pool (0 when new_len ≤ length()):
  // retrieval_slots * (ceil(new_len/P) - ceil(length/P)) + streaming_slots * (growth of
  // StreamingGeometry::pages_for_length). InternalError when the count does not fit int32.
  int32_t pages_needed(int64_t new_len) const;
  // Pages a sequence of this shape holds at to_len beyond those it holds at from_len (the same count
  // for from_len ≤ to_len; pages_needed(n) is pages_between(length(), n) when n > length()).
  int32_t pages_between(int64_t from_len, int64_t to_len) const;
  // Grows the tables to hold new_len tokens, taking pages from the pool. All or nothing.
  // Preconditions: new_len ≥ length() and pool.can_allocate(pages_needed(new_len)); else
  // InternalError, nothing changed.
  void grow(int64_t new_len, PagePool& pool);
  // Starts an empty sequence from shared blocks: blocks[b][slot] is the page of retrieval slot `slot`
  // for block b; each gets a pool reference, and length() becomes blocks.size() · page_tokens.
  // Streaming slots take their sink and ring pages for that length fresh from the pool, as grow()
  // would (their contents are the caller's to fill). InternalError (nothing changed) when the
  // sequence is not empty, a block lists other than one page per retrieval slot, or the pool lacks
  // the streaming pages.
  void adopt(std::span<const std::vector<int32_t>> blocks, PagePool& pool);
  // Returns every page to the pool; the sequence is empty afterwards.
  void release(PagePool& pool);

  int32_t retrieval_slots() const { return static_cast<int32_t>(retrieval_.size()); }
  int32_t streaming_slots() const { return static_cast<int32_t>(streaming_.size()); }
  // Block table of a retrieval slot: page for block b at [b].
  const std::vector<int32_t>& retrieval_pages(int32_t slot) const { return retrieval_[static_cast<size_t>(slot)]; }
  // Sink pages then ring pages of a streaming slot (see StreamingGeometry::locate).
  const std::vector<int32_t>& streaming_pages(int32_t slot) const { return streaming_[static_cast<size_t>(slot)]; }
  const std::optional<StreamingGeometry>& streaming_geometry() const { return geometry_; }

  int32_t pages_held(HeadRole role) const;  // pages this sequence holds for the role
  int32_t pages_held() const { return pages_held(HeadRole::kRetrieval) + pages_held(HeadRole::kStreaming); }

 private:
  int32_t page_tokens_;
  std::optional<StreamingGeometry> geometry_;
  int64_t length_ = 0;
  std::vector<std::vector<int32_t>> retrieval_;
  std::vector<std::vector<int32_t>> streaming_;
};

}  // namespace sparseserve::kvcache
