#include "kvcache/kv_cache_manager.h"

#include <algorithm>

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
  check(layout.retrieval_slots >= 0 && layout.streaming_slots >= 0, "KV cache: negative slot count in the layout");
  check(layout.retrieval_slots + layout.streaming_slots > 0, "KV cache: layout without any slot");
  std::optional<StreamingGeometry> geometry;
  if (layout.streaming_slots > 0) {
    check(layout.streaming.has_value(), "KV cache: streaming slots without a streaming window");
    check(layout.streaming->sink_tokens >= 0 && layout.streaming->local_tokens >= 1,
          "KV cache: invalid streaming window in the layout");
    geometry.emplace(config_.page_tokens, *layout.streaming);
  }
  seqs_.emplace(id, SequenceKv(config_.page_tokens, layout.retrieval_slots, layout.streaming_slots, geometry));
}

int64_t KvCacheManager::add_sequence(uint64_t id, const SequenceLayout& layout, std::shared_ptr<const PrefixKey> prefix,
                                     int64_t max_cached_tokens) {
  add_sequence(id, layout);
  if (!cache_ || prefix == nullptr || layout.streaming_slots > 0 || layout.retrieval_slots == 0) return 0;
  Chain& chain = chains_[id];
  chain.key = std::move(prefix);
  if (!chain.key->match) return 0;
  const int64_t P = config_.page_tokens;
  const std::vector<PrefixCache::Serial> found =
      cache_->match(chain.key->profile, chain.key->tokens, std::max<int64_t>(0, max_cached_tokens) / P);
  if (found.empty()) return 0;
  std::vector<std::vector<int32_t>> blocks;
  blocks.reserve(found.size());
  for (const PrefixCache::Serial s : found) blocks.push_back(cache_->pages(s));
  SequenceKv& s = seq(id);
  s.adopt(blocks, pool_);
  for (const PrefixCache::Serial e : found) cache_->acquire(e);
  chain.used = found;
  return s.length();
}

void KvCacheManager::commit(uint64_t id, int64_t computed, std::span<const int32_t> tokens) {
  const SequenceKv& s = sequence(id);
  check(computed >= 0 && computed <= s.length(), "KV cache: commit beyond the sequence's length");
  const auto it = chains_.find(id);
  if (it == chains_.end()) return;
  Chain& chain = it->second;
  const int64_t P = config_.page_tokens;
  const int64_t full = std::min<int64_t>(computed, std::ssize(tokens)) / P;
  if (std::ssize(chain.used) >= full) return;  // most steps: no block completed
  std::vector<int32_t> pages(static_cast<size_t>(s.retrieval_slots()));
  while (std::ssize(chain.used) < full) {
    const int64_t b = std::ssize(chain.used);  // the next block to walk
    const PrefixCache::Serial parent = chain.used.empty() ? 0 : chain.used.back();
    const auto block = tokens.subspan(static_cast<size_t>(b * P), static_cast<size_t>(P));
    if (const PrefixCache::Serial cached = cache_->find(chain.key->profile, parent, block); cached != 0) {
      // Another sequence's pages hold the same K/V (this one's stay its own): used, so that the
      // entry stays while this chain's later blocks hang on it.
      cache_->acquire(cached);
      chain.used.push_back(cached);
      continue;
    }
    for (int32_t slot = 0; slot < s.retrieval_slots(); ++slot) {
      pages[static_cast<size_t>(slot)] = s.retrieval_pages(slot)[static_cast<size_t>(b)];
    }
    chain.used.push_back(cache_->insert(chain.key->profile, parent, block, pages, pool_));
  }
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
  if (const auto c = chains_.find(id); c != chains_.end()) {
    cache_->release(c->second.used);
    chains_.erase(c);
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
