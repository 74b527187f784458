// Automatic prefix caching (vLLM's): the pages of full blocks whose K/V a sequence has computed stay
// indexed by their tokens, so that a later sequence whose prompt begins with the same blocks, under the
// same sparsity profile, shares those pages instead of computing them again.
//
// An entry is one block of one chain: a profile, the entry of the block before it (none for block 0)
// and the block's `page_tokens` token ids, exactly (no hash is trusted: lookups compare the tokens).
// It holds one page per retrieval lane of the profile, in slot order, and one pool reference to each.
// Profiles with streaming heads add a snapshot: one page per streaming lane holding a copy of the
// block's K/V (a ring page is overwritten as the window moves, so the cache keeps its own copy; the
// copies themselves are KvCacheManager's).
// A sequence that computed or adopted an entry's pages is one of its users; an entry without users is
// evictable: its pages count as free (KvCacheManager::free_pages) and are taken back, least recently
// released first, when the pool runs short. A snapshot no sequence reads is evictable on its own, even
// while its entry is used (it is only ever a copy's source); a pinned one (a copy into or out of it is
// pending) is not. Serial numbers are never reused, so a chain never links to an evicted entry's
// successor in its slot.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvcache/page_pool.h"

namespace sparseserve::kvcache {

class PrefixCache {
 public:
  using Serial = uint64_t;  // an entry; 0 is none

  explicit PrefixCache(int32_t page_tokens);

  // The longest chain of cached blocks that `tokens` begins with under `profile`, at most max_blocks
  // long (block b is tokens [b·P, (b+1)·P)). Read-only.
  std::vector<Serial> match(const std::string& profile, std::span<const int32_t> tokens, int64_t max_blocks) const;
  // The entry registered for this block, or 0.
  Serial find(const std::string& profile, Serial parent, std::span<const int32_t> block) const;
  // Registers a block: `pages` (one per retrieval lane) each get a pool reference. The caller is its
  // first user. InternalError when an equal entry exists (find first), for a block of other than
  // page_tokens tokens, or an unknown parent.
  Serial insert(const std::string& profile, Serial parent, std::span<const int32_t> block,
                std::span<const int32_t> pages, PagePool& pool);

  bool contains(Serial s) const { return entries_.contains(s); }
  const std::vector<int32_t>& pages(Serial s) const;
  // The entry's snapshot pages (streaming lanes, slot order), empty when it has none.
  const std::vector<int32_t>& snapshot(Serial s) const;
  // Gives the entry a snapshot: `pages` (one per streaming lane, allocated by the caller) pass to the
  // cache with their pool reference. InternalError when it has one or pages is empty.
  void set_snapshot(Serial s, std::vector<int32_t> pages);
  // A pending copy reads or fills the snapshot: it is not evicted until unpinned. InternalError for
  // an entry without snapshot (pin) or without pins (unpin).
  void pin(Serial s);
  void unpin(Serial s);
  // Returns the snapshot's pages to the pool (a snapshot whose copy never ran). InternalError while
  // pinned.
  void drop_snapshot(Serial s, PagePool& pool);
  // Drops every unpinned snapshot holding one of `pages` (copies into them failed). O(entries).
  void drop_snapshots_holding(std::span<const int32_t> pages, PagePool& pool);
  // A sequence starts using the entry (it leaves the evictable list).
  void acquire(Serial s);
  // The entry's pages become `pages` (one per retrieval lane, the same K/V computed again by a
  // sequence that uses the entry): the cache's references move to them, and the old pages go back to
  // the pool unless a sequence holds them. InternalError for an entry without users or another number
  // of pages.
  void rebind(Serial s, std::span<const int32_t> pages, PagePool& pool);
  // Sequences using the entry.
  int32_t users(Serial s) const { return at(s).users; }
  // Whether no sequence holds the entry's pages (the cache's references are their only ones).
  bool pages_unheld(Serial s, const PagePool& pool) const;
  // The sequence stops using these entries, given in chain order; those left without users become
  // evictable, the chain's last block first (it is the least likely to be matched again).
  void release(std::span<const Serial> chain);

  // Pages that eviction could return to the pool.
  int32_t evictable_pages() const { return evictable_pages_; }
  // Of evictable_pages, those that would stop being evictable if one more sequence used each entry
  // of `used` (distinct) and pinned each of `pinned` (a subset of used). Read-only.
  int32_t evictable_pages_used(std::span<const Serial> used, std::span<const Serial> pinned) const;
  // Evicts entries without users and snapshots without pins, least recently released first, until
  // the pool has `free` free pages or nothing is evictable.
  void evict_until_free(int32_t free, PagePool& pool);
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    uint32_t profile = 0;
    Serial parent = 0;
    std::vector<int32_t> tokens;
    std::vector<int32_t> pages;
    std::vector<int32_t> snapshot;
    int32_t users = 0;
    int32_t pins = 0;
    uint64_t key = 0;
    // In lru_ when evictable: the whole entry (no users, no pins) or its snapshot alone (users, no
    // pins); lru_pages: the pages that unit frees, 0 while not in lru_.
    std::list<Serial>::iterator lru;
    int32_t lru_pages = 0;
  };
  // The pages e's evictable unit would free with that many users and pins (0 also when none is).
  static int32_t unit_pages(const Entry& e, int32_t users, int32_t pins);
  // Puts the entry's evictable unit, if any, at the back of lru_ (most recently released).
  void relink(Serial s, Entry& e);
  void unlink(Entry& e);
  uint64_t key_of(uint32_t profile, Serial parent, std::span<const int32_t> block) const;
  Serial find_id(uint32_t profile, Serial parent, std::span<const int32_t> block) const;
  Entry& at(Serial s);
  const Entry& at(Serial s) const;
  void evict(Serial s, PagePool& pool);

  int32_t page_tokens_;
  std::unordered_map<std::string, uint32_t> profiles_;  // interned profile names
  std::unordered_map<Serial, Entry> entries_;
  std::unordered_multimap<uint64_t, Serial> index_;  // key_of(...) → entries with that key
  std::list<Serial> lru_;  // evictable units (Entry::lru), the next to evict first
  int32_t evictable_pages_ = 0;
  Serial next_serial_ = 1;
};

}  // namespace sparseserve::kvcache
