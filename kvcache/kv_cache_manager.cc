#include "kvcache/kv_cache_manager.h"

#include <algorithm>
#include <numeric>

#include <fmt/format.h>

#include "common/errors.h"

namespace sparseserve::kvcache {

namespace {

// Appends the rows (sequence × slot) of a CSR table: pages(seq, slot) is the slot's page list,
// last_len(seq, pages) the valid tokens in its last page. Slots a sequence lacks get empty rows.
template <class Pages, class LastLen>
void append_rows(PageTable& t, const std::vector<const SequenceKv*>& seqs, Pages pages, LastLen last_len) {
  t.indptr.push_back(0);
  for (const SequenceKv* s : seqs) {
    t.seq_len.push_back(s->length());
    for (int32_t slot = 0; slot < t.slots; ++slot) {
      const std::vector<int32_t>* list = pages(*s, slot);
      int32_t last = 0;
      if (list != nullptr && !list->empty()) {
        t.indices.insert(t.indices.end(), list->begin(), list->end());
        last = last_len(*s, *list);
      }
      t.last_page_len.push_back(last);
      check(t.indices.size() <= INT32_MAX, "KV cache: page table exceeds int32 indices");
      t.indptr.push_back(static_cast<int32_t>(t.indices.size()));
    }
  }
}

// The first ring block a query at or after n·P attends: its window starts at n·P − local + 1.
int64_t window_block(int64_t n, int64_t P, const StreamingGeometry& g) {
  return std::max<int64_t>(g.sink_pages(), std::max<int64_t>(0, n * P - g.window().local_tokens + 1) / P);
}

// The sequence's page of each retrieval slot for block b, in slot order (a prefix cache entry's pages).
std::vector<int32_t> block_pages(const SequenceKv& s, int64_t b) {
  std::vector<int32_t> pages(static_cast<size_t>(s.retrieval_slots()));
  for (int32_t slot = 0; slot < s.retrieval_slots(); ++slot) {
    pages[static_cast<size_t>(slot)] = s.retrieval_pages(slot)[static_cast<size_t>(b)];
  }
  return pages;
}

}  // namespace

SequenceLayout SequenceLayout::from_roles(const HeadRoles& roles, std::optional<StreamingWindow> window) {
  SequenceLayout layout;
  layout.retrieval_slots = roles.slots(HeadRole::kRetrieval);
  layout.streaming_slots = roles.slots(HeadRole::kStreaming);
  if (layout.streaming_slots > 0) {
    if (!window) throw InvalidArgument("the profile has streaming heads but no streaming window");
    layout.streaming = window;
  }
  return layout;
}

KvCacheManager::KvCacheManager(KvCacheConfig config, int32_t num_pages, bool prefix_caching)
    : config_(config), pool_(num_pages) {
  config_.validate();
  if (prefix_caching) cache_.emplace(config_.page_tokens);
}

void KvCacheManager::add_sequence(uint64_t id, const SequenceLayout& layout) {
  if (seqs_.contains(id)) throw InternalError(fmt::format("KV cache: sequence {} already exists", id));
  seqs_.emplace(id, make_sequence(layout));
}

SequenceKv KvCacheManager::make_sequence(const SequenceLayout& layout) const {
  check(layout.retrieval_slots >= 0 && layout.streaming_slots >= 0, "KV cache: negative slot count in the layout");
  check(layout.retrieval_slots + layout.streaming_slots > 0, "KV cache: layout without any slot");
  std::optional<StreamingGeometry> geometry;
  if (layout.streaming_slots > 0) {
    check(layout.streaming.has_value(), "KV cache: streaming slots without a streaming window");
    check(layout.streaming->sink_tokens >= 0 && layout.streaming->local_tokens >= 1,
          "KV cache: invalid streaming window in the layout");
    geometry.emplace(config_.page_tokens, *layout.streaming);
  }
  return SequenceKv(config_.page_tokens, layout.retrieval_slots, layout.streaming_slots, geometry);
}

std::vector<PrefixCache::Serial> KvCacheManager::adoptable(const SequenceKv& s, const PrefixKey& key,
                                                           int64_t max_cached_tokens, int64_t align_tokens) const {
  if (!key.match) return {};
  const int64_t P = config_.page_tokens;
  const int64_t step = std::lcm(P, align_tokens) / P;  // blocks: n·P is a multiple of align_tokens iff step divides n
  std::vector<PrefixCache::Serial> found = cache_->match(key.profile, key.tokens, std::max<int64_t>(0, max_cached_tokens) / P);
  found.resize(found.size() / static_cast<size_t>(step) * static_cast<size_t>(step));
  if (s.streaming_slots() > 0) found.resize(static_cast<size_t>(covered_blocks(found, step, *s.streaming_geometry())));
  return found;
}

// Each streaming page's block at n blocks (locate's index): sink blocks, then the ring's last
// ring_pages blocks. Those a later query attends come from their snapshots; the others (in the ring,
// outside the window) are zero-filled: they are read and masked, so they must be finite.
std::vector<int64_t> KvCacheManager::ring_sources(const StreamingGeometry& g, int64_t n) const {
  const int64_t P = config_.page_tokens;
  const int64_t sink = std::min<int64_t>(g.sink_pages(), n);
  const int64_t window = window_block(n, P, g);
  std::vector<int64_t> sources(static_cast<size_t>(g.pages_for_length(n * P)), -1);
  auto hold = [&](int64_t b) { sources[static_cast<size_t>(g.locate(b * P).index)] = b < sink || b >= window ? b : -1; };
  for (int64_t b = 0; b < sink; ++b) hold(b);
  for (int64_t b = std::max<int64_t>(g.sink_pages(), n - g.ring_pages()); b < n; ++b) hold(b);
  return sources;
}

int64_t KvCacheManager::add_sequence(uint64_t id, const SequenceLayout& layout, std::shared_ptr<const PrefixKey> prefix,
                                     int64_t max_cached_tokens, int64_t align_tokens) {
  if (align_tokens < 1) throw InternalError(fmt::format("kv cache: sequence {} with align_tokens {}", id, align_tokens));
  add_sequence(id, layout);
  if (!cache_ || prefix == nullptr) return 0;
  Chain& chain = chains_[id];
  chain.key = std::move(prefix);
  SequenceKv& s = seq(id);
  const std::vector<PrefixCache::Serial> found = adoptable(s, *chain.key, max_cached_tokens, align_tokens);
  if (found.empty()) return 0;
  for (const PrefixCache::Serial e : found) cache_->acquire(e);  // so that no eviction below takes them
  chain.used = found;  // released with the sequence, whatever throws below
  if (s.streaming_slots() == 0) {
    adopt(s, found);
    return s.length();
  }
  // The snapshots the ring's copies read are pinned first, so that no eviction below takes them.
  const std::vector<int64_t> sources = ring_sources(*s.streaming_geometry(), std::ssize(found));
  Pending& pending = pending_[id];
  for (const int64_t b : sources) {
    if (b < 0) continue;
    cache_->pin(found[static_cast<size_t>(b)]);
    pending.read.push_back(found[static_cast<size_t>(b)]);
  }
  const int32_t fresh = s.streaming_slots() * static_cast<int32_t>(sources.size());
  if (fresh > free_pages()) {
    drop_pending(id);
    cache_->release(found);
    chain.used.clear();
    return 0;
  }
  if (fresh > pool_.num_free()) cache_->evict_until_free(fresh, pool_);
  adopt(s, found);
  const auto P = static_cast<int32_t>(config_.page_tokens);
  for (int32_t slot = 0; slot < s.streaming_slots(); ++slot) {
    for (size_t i = 0; i < sources.size(); ++i) {
      const int64_t b = sources[i];
      const int32_t src = b >= 0 ? cache_->snapshot(found[static_cast<size_t>(b)])[static_cast<size_t>(slot)] : -1;
      pending.copies.push_back({src, s.streaming_pages(slot)[i], 0, P});
    }
  }
  return s.length();
}

KvCacheManager::AdoptionPreview KvCacheManager::preview_sequence(const SequenceLayout& layout,
                                                                 const std::shared_ptr<const PrefixKey>& prefix,
                                                                 int64_t max_cached_tokens, int64_t align_tokens) const {
  if (align_tokens < 1) throw InternalError(fmt::format("kv cache: a preview with align_tokens {}", align_tokens));
  AdoptionPreview p{.shape = make_sequence(layout), .free_pages = free_pages()};
  if (!cache_ || prefix == nullptr) return p;
  const std::vector<PrefixCache::Serial> found = adoptable(p.shape, *prefix, max_cached_tokens, align_tokens);
  if (found.empty()) return p;
  std::vector<PrefixCache::Serial> pinned;
  int32_t fresh = 0;
  if (p.shape.streaming_slots() > 0) {
    const std::vector<int64_t> sources = ring_sources(*p.shape.streaming_geometry(), std::ssize(found));
    for (const int64_t b : sources) {
      if (b >= 0) pinned.push_back(found[static_cast<size_t>(b)]);
    }
    fresh = p.shape.streaming_slots() * static_cast<int32_t>(sources.size());
  }
  const int32_t free_after_use = free_pages() - cache_->evictable_pages_used(found, pinned);
  if (fresh > free_after_use) return p;  // add_sequence adopts nothing: the ring's pages do not fit
  p.cached_tokens = std::ssize(found) * config_.page_tokens;
  p.pages_held = p.shape.pages_between(0, p.cached_tokens);
  p.free_pages = free_after_use - fresh;
  return p;
}

void KvCacheManager::adopt(SequenceKv& s, std::span<const PrefixCache::Serial> found) {
  std::vector<std::vector<int32_t>> blocks;
  blocks.reserve(found.size());
  for (const PrefixCache::Serial e : found) blocks.push_back(cache_->pages(e));
  s.adopt(blocks, pool_);
  used_streaming_ += s.pages_held(HeadRole::kStreaming);
}

int64_t KvCacheManager::covered_blocks(std::span<const PrefixCache::Serial> found, int64_t step,
                                      const StreamingGeometry& g) const {
  const int64_t P = config_.page_tokens;
  auto has = [&](int64_t b) { return !cache_->snapshot(found[static_cast<size_t>(b)]).empty(); };
  for (auto n = static_cast<int64_t>(found.size()) / step * step; n > 0; n -= step) {
    bool ok = true;
    for (int64_t b = 0; ok && b < std::min<int64_t>(g.sink_pages(), n); ++b) ok = has(b);
    for (int64_t b = window_block(n, P, g); ok && b < n; ++b) ok = has(b);
    if (ok) return n;
  }
  return 0;
}

std::vector<int32_t> KvCacheManager::take_snapshot_pages(int32_t n) {
  if (n > free_pages()) return {};  // the cache goes without; nothing a sequence needs is evicted
  if (n > pool_.num_free()) cache_->evict_until_free(n, pool_);
  return pool_.allocate(n);
}

void KvCacheManager::snapshot(uint64_t id, PrefixCache::Serial e, int64_t b) {
  const SequenceKv& s = sequence(id);
  std::vector<int32_t> pages = take_snapshot_pages(s.streaming_slots());
  if (pages.empty()) return;
  const auto index = static_cast<size_t>(s.streaming_geometry()->locate(b * config_.page_tokens).index);
  Pending& pending = pending_[id];
  for (int32_t slot = 0; slot < s.streaming_slots(); ++slot) {
    pending.copies.push_back({s.streaming_pages(slot)[index], pages[static_cast<size_t>(slot)], 0, config_.page_tokens});
  }
  cache_->set_snapshot(e, std::move(pages));
  cache_->pin(e);
  pending.filled.push_back(e);
}

void KvCacheManager::reserve_snapshots(uint64_t id, int64_t start, int64_t end) {
  const SequenceKv& s = sequence(id);
  const auto it = chains_.find(id);
  if (it == chains_.end() || s.streaming_slots() == 0) return;
  const Chain& chain = it->second;
  if (const auto p = pending_.find(id); p != pending_.end()) {
    check(p->second.reserved.empty(), "KV cache: snapshot pages reserved twice for one step");
  }
  const StreamingGeometry& g = *s.streaming_geometry();
  const int64_t P = config_.page_tokens;
  const std::span<const int32_t> tokens(chain.key->tokens);
  const int64_t last = std::min<int64_t>(end, std::ssize(tokens)) / P;  // blocks before it are full
  // Walks the cache along the prompt from the chain's last block: a block cached with a snapshot
  // already needs none (commit finds it).
  PrefixCache::Serial parent = chain.used.empty() ? 0 : chain.used.back();
  for (auto b = std::ssize(chain.used); b < last; ++b) {
    const auto block = tokens.subspan(static_cast<size_t>(b * P), static_cast<size_t>(P));
    parent = parent != 0 || b == 0 ? cache_->find(chain.key->profile, parent, block) : 0;
    if ((b + 1) * P <= start || b < g.sink_pages()) continue;  // computed already; sink blocks stay whole
    if ((b + g.ring_pages()) * P >= end) break;  // whole in the ring after the chunk: commit copies it
    if (parent != 0 && !cache_->snapshot(parent).empty()) continue;
    std::vector<int32_t> pages = take_snapshot_pages(s.streaming_slots());
    if (pages.empty()) return;
    Pending& pending = pending_[id];
    if (b * P < start) {
      // Its first positions came in an earlier step: the ring still holds them until this step's
      // forward pass, which runs the copies taken before it.
      const auto index = static_cast<size_t>(g.locate(b * P).index);
      for (int32_t slot = 0; slot < s.streaming_slots(); ++slot) {
        pending.copies.push_back({s.streaming_pages(slot)[index], pages[static_cast<size_t>(slot)], 0,
                                  static_cast<int32_t>(start - b * P)});
      }
    }
    pending.reserved.emplace(b, std::move(pages));
  }
}

const std::vector<int32_t>* KvCacheManager::snapshot_target(uint64_t id, int64_t block) const {
  const auto it = pending_.find(id);
  if (it == pending_.end()) return nullptr;
  const auto r = it->second.reserved.find(block);
  return r == it->second.reserved.end() ? nullptr : &r->second;
}

void KvCacheManager::commit(uint64_t id, int64_t computed, std::span<const int32_t> tokens) {
  const SequenceKv& s = sequence(id);
  check(computed >= 0 && computed <= s.length(), "KV cache: commit beyond the sequence's length");
  const auto it = chains_.find(id);
  if (it == chains_.end()) return;
  Chain& chain = it->second;
  const int64_t P = config_.page_tokens;
  const int64_t full = std::min<int64_t>(computed, std::ssize(tokens)) / P;
  if (std::ssize(chain.used) >= full) {  // most steps: no block completed
    release_reserved(id);
    return;
  }
  const StreamingGeometry* g = s.streaming_slots() > 0 ? &*s.streaming_geometry() : nullptr;
  while (std::ssize(chain.used) < full) {
    const int64_t b = std::ssize(chain.used);  // the next block to walk
    const PrefixCache::Serial parent = chain.used.empty() ? 0 : chain.used.back();
    const auto block = tokens.subspan(static_cast<size_t>(b * P), static_cast<size_t>(P));
    PrefixCache::Serial e = cache_->find(chain.key->profile, parent, block);
    if (e != 0) {
      // Cached already, from another sequence's pages: used, so that the entry stays while this
      // chain's later blocks hang on it, and moved onto this sequence's own pages of the same K/V
      // when no sequence holds the entry's (see keep_pages_held).
      cache_->acquire(e);
      if (cache_->pages_unheld(e, pool_)) cache_->rebind(e, block_pages(s, b), pool_);
    } else {
      e = cache_->insert(chain.key->profile, parent, block, block_pages(s, b), pool_);
    }
    chain.used.push_back(e);
    if (g == nullptr) continue;
    if (auto p = pending_.find(id); p != pending_.end()) {
      if (auto r = p->second.reserved.find(b); r != p->second.reserved.end()) {
        // The step wrote the block's positions before `ring_from` there; the rest are in the ring.
        const int64_t ring_from = std::max<int64_t>(b * P, computed - int64_t{g->ring_pages()} * P);
        if (cache_->snapshot(e).empty()) {
          if (ring_from < (b + 1) * P) {
            const auto index = static_cast<size_t>(g->locate(b * P).index);
            const auto offset = static_cast<int32_t>(ring_from - b * P);
            for (int32_t slot = 0; slot < s.streaming_slots(); ++slot) {
              p->second.copies.push_back({s.streaming_pages(slot)[index], r->second[static_cast<size_t>(slot)], offset,
                                          static_cast<int32_t>(P) - offset});
            }
          }
          cache_->set_snapshot(e, std::move(r->second));
          cache_->pin(e);
          p->second.filled.push_back(e);
        } else {
          pool_.release(r->second);
        }
        p->second.reserved.erase(r);
      }
    }
    // Whole in the ring: a sink block, or one no later block of this step has overwritten (a chunk
    // writes its last ring_pages pages' positions into the ring, a decode step its one).
    if (cache_->snapshot(e).empty() && (b < g->sink_pages() || (b + g->ring_pages()) * P >= computed)) {
      snapshot(id, e, b);
    }
  }
  release_reserved(id);  // blocks the step did not complete after all
}

std::vector<PageCopy> KvCacheManager::take_copies() {
  std::vector<PageCopy> out;
  for (auto it = pending_.begin(); it != pending_.end();) {
    Pending& pending = it->second;
    out.insert(out.end(), pending.copies.begin(), pending.copies.end());
    for (const auto* list : {&pending.read, &pending.filled}) {
      for (const PrefixCache::Serial e : *list) cache_->unpin(e);
    }
    if (pending.reserved.empty()) {
      it = pending_.erase(it);
    } else {  // reserved for the coming step: kept until its commit
      pending.copies.clear();
      pending.read.clear();
      pending.filled.clear();
      ++it;
    }
  }
  return out;
}

void KvCacheManager::copies_failed(std::span<const PageCopy> copies) {
  if (!cache_) return;
  std::vector<int32_t> pages;
  for (const PageCopy& c : copies) pages.push_back(c.dst);
  cache_->drop_snapshots_holding(pages, pool_);
}

void KvCacheManager::release_reserved(uint64_t id) {
  const auto it = pending_.find(id);
  if (it == pending_.end()) return;
  for (auto& [b, pages] : it->second.reserved) pool_.release(pages);
  it->second.reserved.clear();
}

void KvCacheManager::drop_pending(uint64_t id) {
  release_reserved(id);
  const auto it = pending_.find(id);
  if (it == pending_.end()) return;
  for (const PrefixCache::Serial e : it->second.read) cache_->unpin(e);
  for (const PrefixCache::Serial e : it->second.filled) {
    cache_->unpin(e);
    cache_->drop_snapshot(e, pool_);  // its copy never ran
  }
  pending_.erase(it);
}

bool KvCacheManager::has_sequence(uint64_t id) const { return seqs_.contains(id); }

const SequenceKv& KvCacheManager::sequence(uint64_t id) const {
  const auto it = seqs_.find(id);
  if (it == seqs_.end()) throw InternalError(fmt::format("KV cache: unknown sequence {}", id));
  return it->second;
}

SequenceKv& KvCacheManager::seq(uint64_t id) {
  const auto it = seqs_.find(id);
  if (it == seqs_.end()) throw InternalError(fmt::format("KV cache: unknown sequence {}", id));
  return it->second;
}

int32_t KvCacheManager::pages_needed(uint64_t id, int64_t new_len) const {
  return sequence(id).pages_needed(new_len);
}

bool KvCacheManager::can_allocate(uint64_t id, int64_t new_len) const {
  const int32_t need = pages_needed(id, new_len);
  return need >= 0 && need <= free_pages();
}

void KvCacheManager::allocate(uint64_t id, int64_t new_len) {
  SequenceKv& s = seq(id);
  const int32_t need = s.pages_needed(new_len);
  if (cache_ && need > pool_.num_free()) cache_->evict_until_free(need, pool_);
  const int32_t s0 = s.pages_held(HeadRole::kStreaming);
  s.grow(new_len, pool_);  // all or nothing
  used_streaming_ += s.pages_held(HeadRole::kStreaming) - s0;
}

void KvCacheManager::release(uint64_t id) {
  const auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  SequenceKv& s = it->second;
  const int32_t st = s.pages_held(HeadRole::kStreaming);
  s.release(pool_);
  used_streaming_ -= st;
  seqs_.erase(it);
  drop_pending(id);  // copies into its pages are moot; those into snapshots never ran
  if (const auto c = chains_.find(id); c != chains_.end()) {
    const Chain chain = std::move(c->second);
    chains_.erase(c);
    keep_pages_held(chain.used);
    cache_->release(chain.used);
  }
}

// A used entry's pages are those of one of its users, or they would be held twice: the entry's,
// unevictable while it is used, beside the user's own copy, and uncounted by the scheduler (a lone
// sequence recomputing a prompt cached before it ran out of pages at the same point after every
// preemption). commit moves an entry whose pages nobody holds onto the computing sequence's; here,
// when a released sequence held an entry's pages, another user's own copy takes its place.
void KvCacheManager::keep_pages_held(std::span<const PrefixCache::Serial> released) {
  for (size_t b = 0; b < released.size(); ++b) {
    const PrefixCache::Serial e = released[b];
    if (cache_->users(e) < 2 || !cache_->pages_unheld(e, pool_)) continue;
    for (const auto& [other, chain] : chains_) {
      if (chain.used.size() <= b || chain.used[b] != e) continue;
      cache_->rebind(e, block_pages(sequence(other), static_cast<int64_t>(b)), pool_);
      break;
    }
  }
}

int32_t KvCacheManager::used_pages(HeadRole role) const {
  if (role == HeadRole::kStreaming) return used_streaming_;
  return num_pages() - free_pages() - used_streaming_;
}

// Both tables: slots = the most slots of the role among the batch's sequences; a sequence with
// fewer slots (another profile) gets empty rows there (no pages, last_page_len 0).

PageTable KvCacheManager::retrieval_table(std::span<const uint64_t> ids) const {
  PageTable t;
  t.page_tokens = config_.page_tokens;
  std::vector<const SequenceKv*> seqs;
  for (const uint64_t id : ids) {
    seqs.push_back(&sequence(id));
    t.slots = std::max(t.slots, seqs.back()->retrieval_slots());
  }
  const int64_t p = config_.page_tokens;
  append_rows(
      t, seqs,
      [](const SequenceKv& s, int32_t slot) { return slot < s.retrieval_slots() ? &s.retrieval_pages(slot) : nullptr; },
      [&](const SequenceKv& s, const std::vector<int32_t>& pages) {
        return static_cast<int32_t>(s.length() - (static_cast<int64_t>(pages.size()) - 1) * p);
      });
  return t;
}

PageTable KvCacheManager::streaming_table(std::span<const uint64_t> ids) const {
  PageTable t;
  t.page_tokens = config_.page_tokens;
  std::vector<const SequenceKv*> seqs;
  for (const uint64_t id : ids) {
    const SequenceKv& s = *seqs.emplace_back(&sequence(id));
    t.slots = std::max(t.slots, s.streaming_slots());
    const StreamingGeometry* g = s.streaming_slots() > 0 ? &*s.streaming_geometry() : nullptr;
    t.sink_tokens.push_back(g != nullptr ? g->window().sink_tokens : 0);
    t.local_tokens.push_back(g != nullptr ? g->window().local_tokens : 0);
    t.sink_pages.push_back(g != nullptr ? g->sink_pages() : 0);
    t.ring_pages.push_back(g != nullptr ? g->ring_pages() : 0);
  }
  append_rows(
      t, seqs,
      [](const SequenceKv& s, int32_t slot) { return slot < s.streaming_slots() ? &s.streaming_pages(slot) : nullptr; },
      [&](const SequenceKv&, const std::vector<int32_t>&) { return config_.page_tokens; });
  return t;
}

}  // namespace sparseserve::kvcache
