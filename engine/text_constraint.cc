#include "engine/text_constraint.h"

#include <algorithm>
#include <cmath>

#include "common/errors.h"

namespace sparseserve {

StopsNow::StopsNow(bool complete, bool may_stop, std::span<const int32_t> stops, std::span<const float> logits) {
  allowed_ = complete && may_stop &&
             std::any_of(stops.begin(), stops.end(), [&](int32_t id) { return logits[static_cast<size_t>(id)] != -INFINITY; });
  if (!allowed_) return;
  for (int32_t id : stops) kept_.emplace_back(id, logits[static_cast<size_t>(id)]);
}

void StopsNow::restore(std::span<float> logits) const {
  for (const auto& [id, l] : kept_) logits[static_cast<size_t>(id)] = l;
}

MaskCache::Verdicts& MaskCache::lookup(std::string key, int32_t ids) {
  if (const auto it = index_.find(key); it != index_.end()) {
    ++hits_;
    entries_.splice(entries_.begin(), entries_, it->second);
    return it->second->second;
  }
  ++misses_;
  const size_t words = (static_cast<size_t>(std::max(ids, 0)) + 63) / 64;
  entries_.emplace_front(std::move(key), Verdicts{std::vector<uint64_t>(words, 0), std::vector<uint64_t>(words, 0)});
  index_.emplace(entries_.front().first, entries_.begin());
  while (entries_.size() > std::max<size_t>(capacity_, 1)) {
    index_.erase(entries_.back().first);
    entries_.pop_back();
  }
  return entries_.front().second;
}

void constrain_text(const TextLanguage& text, const VocabularyBytes& vocab, std::span<const int32_t> stops,
                    bool may_stop, std::span<float> logits, MaskCache* cache) {
  check(static_cast<int64_t>(logits.size()) == vocab.size(), "constrain_text: logits and vocabulary sizes differ");
  const StopsNow stops_now(text.complete(), may_stop, stops, logits);
  if (!stops_now.allowed() && !text.extendable()) return;  // a whole text held open: nothing to steer
  const auto accepted = [&](int32_t id) {
    const std::string_view bytes = vocab.text(id);
    return !bytes.empty() && text.accepts(bytes);
  };
  std::string key = cache != nullptr ? text.state_key() : std::string();
  if (!key.empty()) {
    MaskCache::Verdicts& v = cache->lookup(std::move(key), vocab.size());
    check(v.known.size() * 64 >= static_cast<size_t>(vocab.size()), "constrain_text: a cache made for another vocabulary");
    for (int32_t id = 0; id < vocab.size(); ++id) {
      float& l = logits[static_cast<size_t>(id)];
      if (l == -INFINITY) continue;
      const size_t w = static_cast<size_t>(id) / 64;
      const uint64_t bit = uint64_t{1} << (id % 64);
      if ((v.known[w] & bit) == 0) {
        v.known[w] |= bit;
        if (accepted(id)) v.accepted[w] |= bit;
      }
      if ((v.accepted[w] & bit) == 0) l = -INFINITY;
    }
    stops_now.restore(logits);
    return;
  }
  for (int32_t id = 0; id < vocab.size(); ++id) {
    float& l = logits[static_cast<size_t>(id)];
    if (l != -INFINITY && !accepted(id)) l = -INFINITY;
  }
  stops_now.restore(logits);
}

}  // namespace sparseserve
