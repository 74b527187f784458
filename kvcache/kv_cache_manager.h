// The scheduler's view of KV memory: sequences, their page tables, one shared page pool, usage per
// role. Admission is can_allocate/allocate; release returns every page at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvcache/geometry.h"
#include "kvcache/head_roles.h"
#include "kvcache/page_pool.h"
#include "kvcache/page_table.h"
#include "kvcache/prefix_cache.h"
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

// A sequence's prompt for prefix caching (PrefixCache): its full blocks are looked up when the
// sequence is added; its blocks are registered as they are computed (commit). Under layouts with
// streaming slots the cache keeps a copy of each block's streaming pages (its snapshot): copied from
// the ring when the block is registered while the ring still holds all of it (sink blocks, the blocks
// of a chunk's last ring_pages pages, every block decode steps complete), else written by the step
// itself into pages reserved for it (reserve_snapshots: the blocks a chunk passes over). A chain is
// adopted up to the longest length whose sink blocks and window blocks (those holding positions a
// later query attends) have snapshots; those are copied into the new sequence's sink and ring pages,
// and its other ring pages (outside the window) are zero-filled (take_copies).
struct PrefixKey {
  std::string profile;          // the sparsity profile's name: its K/V differ from another profile's
  std::vector<int32_t> tokens;  // the prompt
  bool match = true;            // false: its blocks are registered, never reused (prompt logprobs)
};

// K and V of tokens [offset, offset + tokens) of page src copied to the same tokens of page dst in
// the backend's page memory; src < 0: those tokens of dst are zero-filled. Only streaming lanes'
// pages are copied (they keep no min/max metadata).
struct PageCopy {
  int32_t src = -1;
  int32_t dst = -1;
  int32_t offset = 0;
  int32_t tokens = 0;
  bool operator==(const PageCopy&) const = default;
};

class KvCacheManager {
 public:
  // Throws InvalidArgument for an invalid config or num_pages < 0. prefix_caching: keep computed
  // prompt blocks for later sequences (add_sequence with a key, commit).
  KvCacheManager(KvCacheConfig config, int32_t num_pages, bool prefix_caching = false);

  const KvCacheConfig& config() const { return config_; }
  bool prefix_caching() const { return cache_.has_value(); }
  // Registers an empty sequence. InternalError when the id exists or the layout is inconsistent.
  void add_sequence(uint64_t id, const SequenceLayout& layout);
  // Registers a sequence that may start from cached blocks of `prefix` (null or prefix caching off:
  // an empty one): the longest cached chain of its prompt's blocks, at most max_cached_tokens and a
  // multiple of align_tokens (≥ 1: a dynamic prefill's query blocks), is shared (length() is then its
  // tokens); with streaming slots, the longest whose snapshots cover its sink and window, and only
  // when the pool has the sequence's streaming pages (their copies are pending: take_copies).
  // Returns that length. InternalError for align_tokens < 1.
  int64_t add_sequence(uint64_t id, const SequenceLayout& layout, std::shared_ptr<const PrefixKey> prefix,
                       int64_t max_cached_tokens, int64_t align_tokens = 1);
  // What that add_sequence would do now, with nothing changed (no page taken, no cached block
  // evicted, no recency touched): the scheduler decides an admission on it first.
  struct AdoptionPreview {
    SequenceKv shape;           // an empty sequence of the layout
    int64_t cached_tokens = 0;  // add_sequence's result
    int32_t pages_held = 0;     // the sequence's pages_held() right after it (adopted pages too)
    int32_t free_pages = 0;     // free_pages() right after it
    // pages_needed(id, new_len) right after it.
    int32_t pages_needed(int64_t new_len) const {
      return new_len <= cached_tokens ? 0 : shape.pages_between(cached_tokens, new_len);
    }
  };
  // InternalError as add_sequence's (the layout, align_tokens < 1).
  AdoptionPreview preview_sequence(const SequenceLayout& layout, const std::shared_ptr<const PrefixKey>& prefix,
                                   int64_t max_cached_tokens, int64_t align_tokens = 1) const;
  // The sequence's first `computed` tokens hold their K/V, and `tokens` begins with its tokens (the
  // prompt, then generated ones whose K/V equal a prefill's): its full blocks among the first
  // min(computed, tokens.size()) are registered in the prefix cache (a block cached already stays
  // the entry there, used by this sequence until it ends, and moved onto this sequence's pages when no
  // sequence holds its own: a cached page is not held beside its copy). Called after the step that
  // computed them.
  // No-op without a key. With streaming slots a registered block still whole in the ring gets a
  // snapshot when pages are free or evictable (its copy is pending: take_copies).
  // InternalError for an unknown id or computed beyond length().
  void commit(uint64_t id, int64_t computed, std::span<const int32_t> tokens);
  // Before a step that computes positions [start, end) of the sequence: pages, one per streaming
  // slot, for each of its prompt's blocks inside the chunk that the chunk does not leave whole in the
  // ring (not a sink block; positions before end − ring_pages·P are never written there) and has no
  // snapshot cached yet, when pages are free or evictable. The runner writes the positions it leaves
  // out of the ring there instead (snapshot_target); a block begun in an earlier step gets its first
  // positions from the ring (a pending copy, before the step); commit adds the block's positions that
  // are in the ring (a copy) and makes the pages the block's snapshot. No-op without a key or
  // streaming slots. InternalError when called twice before commit.
  void reserve_snapshots(uint64_t id, int64_t start, int64_t end);
  // The pages reserved for block b of the sequence (slot order), or null.
  const std::vector<int32_t>* snapshot_target(uint64_t id, int64_t block) const;
  // The page copies add_sequence, reserve_snapshots and commit left pending, which the backend must
  // run in order with its steps: those into a new sequence's ring and into reserved pages before
  // the next step, those into snapshots right after the step that computed their blocks. Sources and
  // destinations are distinct pages; the pages they read and write are not handed out again before
  // the copies run (pins, the sequences' own pages) as long as they run before the next step's
  // allocations. Clears them.
  std::vector<PageCopy> take_copies();
  // The backend could not run these copies: snapshots they were to fill are dropped (never matched
  // with stale contents). The sequences whose rings they were to fill must be released.
  void copies_failed(std::span<const PageCopy> copies);
  bool has_sequence(uint64_t id) const;
  // Pages that growing `id` to new_len tokens needs, and whether the pool has them.
  int32_t pages_needed(uint64_t id, int64_t new_len) const;
  bool can_allocate(uint64_t id, int64_t new_len) const;
  // Grows the sequence's tables to new_len, all or nothing. Preconditions: can_allocate and
  // new_len ≥ the current length (else InternalError, nothing changed). Unknown ids: InternalError.
  void allocate(uint64_t id, int64_t new_len);
  // Frees all pages of the sequence and forgets it (no-op for an unknown id). Its prompt blocks stay in
  // the prefix cache, evictable once no sequence uses them.
  void release(uint64_t id);
  const SequenceKv& sequence(uint64_t id) const;

  // CSR tables for a batch (sequences in order; layout in page_table.h). The streaming table
  // carries each sequence's own window, so a batch may mix profiles.
  PageTable retrieval_table(std::span<const uint64_t> ids) const;
  PageTable streaming_table(std::span<const uint64_t> ids) const;

  int32_t num_pages() const { return pool_.num_pages(); }
  // Pages an allocation may take: the pool's free pages and the cached ones no sequence uses.
  int32_t free_pages() const { return pool_.num_free() + cached_free_pages(); }
  // Of free_pages, those holding cached blocks (taken back, least recently used first, when needed).
  int32_t cached_free_pages() const { return cache_ ? cache_->evictable_pages() : 0; }
  // Pages the sequences hold for the role, a shared page once, and (retrieval) the cached blocks
  // their chains use whose pages none of them holds (a user that adopted an entry's pages holds
  // them; one that computed them again holds its own copy, unless the entry moved onto it);
  // used_pages of both roles sum to num_pages - free_pages.
  int32_t used_pages(HeadRole role) const;
  size_t num_sequences() const { return seqs_.size(); }

 private:
  // A sequence's part in the prefix cache: the entry of each of its blocks walked so far (adopted,
  // registered, or found cached), in block order, all used by it (so none is evicted meanwhile).
  struct Chain {
    std::shared_ptr<const PrefixKey> key;
    std::vector<PrefixCache::Serial> used;
  };
  // Moves each entry of a released chain whose pages no sequence holds any more, and that another
  // sequence uses with its own copy, onto that copy.
  void keep_pages_held(std::span<const PrefixCache::Serial> released);
  // Copies a sequence left pending, and the snapshots they read or fill (pinned until taken; one
  // never filled is dropped with the sequence); pages reserved for its step's snapshots by block.
  struct Pending {
    std::vector<PageCopy> copies;
    std::vector<PrefixCache::Serial> read, filled;
    std::unordered_map<int64_t, std::vector<int32_t>> reserved;
  };
  // Pages for one snapshot (free, or evicting unused cache pages), or none.
  std::vector<int32_t> take_snapshot_pages(int32_t n);
  SequenceKv& seq(uint64_t id);
  SequenceKv make_sequence(const SequenceLayout& layout) const;  // empty; InternalError for a bad layout
  // The cached chain add_sequence would adopt for a sequence shaped as s (prefix caching on).
  std::vector<PrefixCache::Serial> adoptable(const SequenceKv& s, const PrefixKey& key, int64_t max_cached_tokens,
                                             int64_t align_tokens) const;
  // For a streaming sequence adopting n blocks under g, per streaming page index (locate's): the
  // block whose snapshot is copied there, or −1 (zero-filled).
  std::vector<int64_t> ring_sources(const StreamingGeometry& g, int64_t n) const;
  // The longest prefix of `found` (at most its length, in blocks, a multiple of `step`) whose
  // snapshots cover what a sequence of that length with geometry g reads: its sink blocks and window
  // blocks.
  int64_t covered_blocks(std::span<const PrefixCache::Serial> found, int64_t step, const StreamingGeometry& g) const;
  // Gives entry e a snapshot of block b from sequence id's ring, when pages can be had.
  void snapshot(uint64_t id, PrefixCache::Serial e, int64_t b);
  void drop_pending(uint64_t id);
  void release_reserved(uint64_t id);
  // s adopts the entries' retrieval pages and fresh streaming pages (SequenceKv::adopt).
  void adopt(SequenceKv& s, std::span<const PrefixCache::Serial> found);
  KvCacheConfig config_;
  PagePool pool_;
  std::optional<PrefixCache> cache_;
  std::unordered_map<uint64_t, SequenceKv> seqs_;
  std::unordered_map<uint64_t, Chain> chains_;
  std::unordered_map<uint64_t, Pending> pending_;
  int32_t used_streaming_ = 0;
};

}  // namespace sparseserve::kvcache
