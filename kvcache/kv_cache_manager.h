// The scheduler's view of KV memory: sequences, their page tables, one shared page pool, usage per
// role. Admission is can_allocate/allocate; release returns every page at once.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>

#include "kvcache/geometry.h"
#include "kvcache/head_roles.h"
#include "kvcache/page_pool.h"
#include "kvcache/page_table.h"
#include "kvcache/sequence_kv.h"

namespace sparseserve::kvcache {

// The part of a sparsity profile the cache needs: slots per role and the streaming window.
struct SequenceLayout {
  int32_t retrieval_slots = 0;
  int32_t streaming_slots = 0;
  std::optional<StreamingWindow> streaming;  // required when streaming_slots > 0
  // Slots from roles.slots(); `window` is kept only when some head streams, and then required
  // (InvalidArgument without it).
  static SequenceLayout from_roles(const HeadRoles& roles, std::optional<StreamingWindow> window);
};

class KvCacheManager {
 public:
  // Throws InvalidArgument for an invalid config or num_pages < 0.
  KvCacheManager(KvCacheConfig config, int32_t num_pages);

  const KvCacheConfig& config() const { return config_; }
  // Registers an empty sequence. InternalError when the id exists or the layout is inconsistent.
  void add_sequence(uint64_t id, const SequenceLayout& layout);
  bool has_sequence(uint64_t id) const;
  // Pages that growing `id` to new_len tokens needs, and whether the pool has them.
  int32_t pages_needed(uint64_t id, int64_t new_len) const;
  bool can_allocate(uint64_t id, int64_t new_len) const;
  // Grows the sequence's tables to new_len, all or nothing. Preconditions: can_allocate and
  // new_len ≥ the current length (else InternalError, nothing changed). Unknown ids: InternalError.
  void allocate(uint64_t id, int64_t new_len);
  // Frees all pages of the sequence and forgets it (no-op for an unknown id).
  void release(uint64_t id);
  const SequenceKv& sequence(uint64_t id) const;

  // CSR tables for a batch (sequences in order; layout in page_table.h). The streaming table
  // carries each sequence's own window, so a batch may mix profiles.
  PageTable retrieval_table(std::span<const uint64_t> ids) const;
  PageTable streaming_table(std::span<const uint64_t> ids) const;

  int32_t num_pages() const { return pool_.num_pages(); }
  int32_t free_pages() const { return pool_.num_free(); }
  // Pages the sequences hold for the role; used_pages of both roles sum to num_pages - free_pages.
  int32_t used_pages(HeadRole role) const { return used_[static_cast<int>(role)]; }
  size_t num_sequences() const { return seqs_.size(); }

 private:
  SequenceKv& seq(uint64_t id);
  KvCacheConfig config_;
  PagePool pool_;
  std::unordered_map<uint64_t, SequenceKv> seqs_;
  int32_t used_[2] = {0, 0};
};

}  // namespace sparseserve::kvcache
