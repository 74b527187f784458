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

namespace {
int idx(HeadRole role) { return static_cast<int>(role); }
}  // namespace

KvCacheManager::KvCacheManager(KvCacheConfig config, int32_t num_pages) : config_(config), pool_(num_pages) {
  config_.validate();
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
  return pool_.can_allocate(pages_needed(id, new_len));
}

void KvCacheManager::allocate(uint64_t id, int64_t new_len) {
  SequenceKv& s = seq(id);
  const int32_t r0 = s.pages_held(HeadRole::kRetrieval), s0 = s.pages_held(HeadRole::kStreaming);
  s.grow(new_len, pool_);  // all or nothing
  used_[idx(HeadRole::kRetrieval)] += s.pages_held(HeadRole::kRetrieval) - r0;
  used_[idx(HeadRole::kStreaming)] += s.pages_held(HeadRole::kStreaming) - s0;
}

void KvCacheManager::release(uint64_t id) {
  const auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  SequenceKv& s = it->second;
  const int32_t r = s.pages_held(HeadRole::kRetrieval), st = s.pages_held(HeadRole::kStreaming);
  s.release(pool_);
  used_[idx(HeadRole::kRetrieval)] -= r;
  used_[idx(HeadRole::kStreaming)] -= st;
  seqs_.erase(it);
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
