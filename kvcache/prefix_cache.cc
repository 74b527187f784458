#include "kvcache/prefix_cache.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/errors.h"

namespace sparseserve::kvcache {

// Invariants: an entry is in lru_ (lru_pages > 0 or a whole entry) exactly when pins == 0 and either
// users == 0 (the whole entry: pages and snapshot) or its snapshot is not empty (the snapshot alone);
// evictable_pages_ is the sum of lru_pages; index_ holds every entry once, under key_of(profile,
// parent, tokens).

namespace {

// One pool reference on each page, all or none.
void retain_all(std::span<const int32_t> pages, PagePool& pool) {
  for (size_t i = 0; i < pages.size(); ++i) {
    try {
      pool.retain(pages[i]);
    } catch (...) {
      pool.release(pages.first(i));
      throw;
    }
  }
}

}  // namespace

PrefixCache::PrefixCache(int32_t page_tokens) : page_tokens_(page_tokens) {
  check(page_tokens >= 1, "PrefixCache: page_tokens must be positive");
}

uint64_t PrefixCache::key_of(uint32_t profile, Serial parent, std::span<const int32_t> block) const {
  // FNV-1a over the profile, the parent and the tokens: a bucket, never a proof (find_id compares).
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xFF;
      h *= 1099511628211ULL;
    }
  };
  mix(profile);
  mix(parent);
  for (const int32_t t : block) mix(static_cast<uint32_t>(t));
  return h;
}

PrefixCache::Serial PrefixCache::find_id(uint32_t profile, Serial parent, std::span<const int32_t> block) const {
  const auto [lo, hi] = index_.equal_range(key_of(profile, parent, block));
  for (auto it = lo; it != hi; ++it) {
    const Entry& e = at(it->second);
    if (e.profile == profile && e.parent == parent && std::ranges::equal(e.tokens, block)) return it->second;
  }
  return 0;
}

PrefixCache::Serial PrefixCache::find(const std::string& profile, Serial parent, std::span<const int32_t> block) const {
  const auto p = profiles_.find(profile);
  return p == profiles_.end() ? 0 : find_id(p->second, parent, block);
}

std::vector<PrefixCache::Serial> PrefixCache::match(const std::string& profile, std::span<const int32_t> tokens,
                                                    int64_t max_blocks) const {
  std::vector<Serial> chain;
  const auto p = profiles_.find(profile);
  if (p == profiles_.end()) return chain;
  const auto P = static_cast<size_t>(page_tokens_);
  const int64_t blocks = std::min<int64_t>(max_blocks, static_cast<int64_t>(tokens.size() / P));
  Serial parent = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    parent = find_id(p->second, parent, tokens.subspan(static_cast<size_t>(b) * P, P));
    if (parent == 0) break;
    chain.push_back(parent);
  }
  return chain;
}

PrefixCache::Serial PrefixCache::insert(const std::string& profile, Serial parent, std::span<const int32_t> block,
                                        std::span<const int32_t> pages, PagePool& pool) {
  check(block.size() == static_cast<size_t>(page_tokens_), "PrefixCache::insert: a block of other than page_tokens tokens");
  check(parent == 0 || entries_.contains(parent), "PrefixCache::insert: unknown parent entry");
  const uint32_t id = profiles_.try_emplace(profile, static_cast<uint32_t>(profiles_.size())).first->second;
  check(find_id(id, parent, block) == 0, "PrefixCache::insert: the block is cached already");
  retain_all(pages, pool);
  const Serial s = next_serial_++;
  Entry e{.profile = id, .parent = parent, .tokens = {block.begin(), block.end()}, .pages = {pages.begin(), pages.end()},
          .snapshot = {}, .users = 1, .pins = 0, .key = key_of(id, parent, block), .lru = lru_.end(), .lru_pages = 0};
  index_.emplace(e.key, s);
  entries_.emplace(s, std::move(e));
  return s;
}

PrefixCache::Entry& PrefixCache::at(Serial s) {
  const auto it = entries_.find(s);
  if (it == entries_.end()) throw InternalError(fmt::format("PrefixCache: unknown entry {}", s));
  return it->second;
}

const PrefixCache::Entry& PrefixCache::at(Serial s) const {
  const auto it = entries_.find(s);
  if (it == entries_.end()) throw InternalError(fmt::format("PrefixCache: unknown entry {}", s));
  return it->second;
}

const std::vector<int32_t>& PrefixCache::pages(Serial s) const { return at(s).pages; }

const std::vector<int32_t>& PrefixCache::snapshot(Serial s) const { return at(s).snapshot; }

void PrefixCache::unlink(Entry& e) {
  if (e.lru == lru_.end()) return;
  lru_.erase(e.lru);
  e.lru = lru_.end();
  evictable_pages_ -= e.lru_pages;
  e.lru_pages = 0;
}

int32_t PrefixCache::unit_pages(const Entry& e, int32_t users, int32_t pins) {
  if (pins > 0 || (users > 0 && e.snapshot.empty())) return 0;
  return static_cast<int32_t>(e.snapshot.size() + (users == 0 ? e.pages.size() : 0));
}

void PrefixCache::relink(Serial s, Entry& e) {
  unlink(e);
  if (e.pins > 0 || (e.users > 0 && e.snapshot.empty())) return;
  e.lru_pages = unit_pages(e, e.users, e.pins);  // an entry without pages is evictable too (0 pages)
  e.lru = lru_.insert(lru_.end(), s);
  evictable_pages_ += e.lru_pages;
}

int32_t PrefixCache::evictable_pages_used(std::span<const Serial> used, std::span<const Serial> pinned) const {
  std::vector<Serial> pins(pinned.begin(), pinned.end());
  std::ranges::sort(pins);
  int64_t n = 0;
  for (const Serial s : used) {
    const Entry& e = at(s);
    n += e.lru_pages - unit_pages(e, e.users + 1, e.pins + (std::ranges::binary_search(pins, s) ? 1 : 0));
  }
  return static_cast<int32_t>(n);
}

void PrefixCache::set_snapshot(Serial s, std::vector<int32_t> pages) {
  Entry& e = at(s);
  check(e.snapshot.empty() && !pages.empty(), "PrefixCache::set_snapshot: the entry has one, or no pages");
  e.snapshot = std::move(pages);
  relink(s, e);
}

void PrefixCache::pin(Serial s) {
  Entry& e = at(s);
  check(!e.snapshot.empty(), "PrefixCache::pin: the entry has no snapshot");
  if (e.pins++ == 0) unlink(e);
}

void PrefixCache::unpin(Serial s) {
  Entry& e = at(s);
  check(e.pins > 0, "PrefixCache::unpin without a pin");
  if (--e.pins == 0) relink(s, e);
}

void PrefixCache::drop_snapshot(Serial s, PagePool& pool) {
  Entry& e = at(s);
  check(e.pins == 0, "PrefixCache::drop_snapshot of a pinned snapshot");
  pool.release(e.snapshot);
  e.snapshot.clear();
  relink(s, e);
}

void PrefixCache::drop_snapshots_holding(std::span<const int32_t> pages, PagePool& pool) {
  for (auto& [s, e] : entries_) {
    const bool hit = std::ranges::any_of(e.snapshot, [&](int32_t p) { return std::ranges::find(pages, p) != pages.end(); });
    if (hit && e.pins == 0) drop_snapshot(s, pool);
  }
}

void PrefixCache::acquire(Serial s) {
  Entry& e = at(s);
  if (e.users++ == 0) relink(s, e);  // the whole entry leaves; its snapshot alone may stay
}

void PrefixCache::rebind(Serial s, std::span<const int32_t> pages, PagePool& pool) {
  Entry& e = at(s);
  check(e.users > 0 && pages.size() == e.pages.size(), "PrefixCache::rebind of an unused entry or to other pages");
  retain_all(pages, pool);
  pool.release(e.pages);  // used: its lru unit is the snapshot alone, whose pages stay
  e.pages.assign(pages.begin(), pages.end());
}

bool PrefixCache::pages_unheld(Serial s, const PagePool& pool) const {
  return std::ranges::all_of(at(s).pages, [&](int32_t p) { return pool.ref_count(p) == 1; });
}

void PrefixCache::release(std::span<const Serial> chain) {
  for (const Serial s : chain) check(at(s).users > 0, "PrefixCache::release of an entry without users");
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
    Entry& e = at(*it);
    if (--e.users == 0) relink(*it, e);
  }
}

void PrefixCache::evict(Serial s, PagePool& pool) {
  const auto it = entries_.find(s);
  check(it != entries_.end() && it->second.pins == 0 && it->second.lru != lru_.end(),
        "PrefixCache: evicting an entry that is not evictable");
  Entry& e = it->second;
  const bool whole = e.users == 0;
  unlink(e);
  pool.release(e.snapshot);  // the cache's own references: the pages' last
  e.snapshot.clear();
  if (!whole) return;  // a used entry loses its snapshot alone
  const auto [lo, hi] = index_.equal_range(e.key);
  for (auto i = lo; i != hi; ++i) {
    if (i->second == s) {
      index_.erase(i);
      break;
    }
  }
  pool.release(e.pages);
  entries_.erase(it);
}

void PrefixCache::evict_until_free(int32_t free, PagePool& pool) {
  while (pool.num_free() < free && !lru_.empty()) evict(lru_.front(), pool);
}

}  // namespace sparseserve::kvcache
