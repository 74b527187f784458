// The per-step mask of constrained decoding to a TextLanguage (guided_choice, guided_regex), and the
// stop rule every structured output shares.
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>
#include <span>
#include <utility>
#include <vector>

#include "engine/text_language.h"
#include "engine/vocabulary_bytes.h"

namespace sparseserve {

// Whether a stop id may end a structured output now, and the stop ids' logits to put back after
// the mask: the text is whole, the minimum is reached (may_stop), and some stop id is still finite
// (other processors may have removed them all). A stop allowed now keeps its logit whatever its
// bytes (one may also be a text token).
class StopsNow {
 public:
  StopsNow(bool complete, bool may_stop, std::span<const int32_t> stops, std::span<const float> logits);
  bool allowed() const { return allowed_; }
  void restore(std::span<float> logits) const;

 private:
  bool allowed_ = false;
  std::vector<std::pair<int32_t, float>> kept_;
};

// Verdicts of constrain_text per state of one TextLanguage object (TextLanguage::state_key): a text
// that comes back to a state (inside a string, at the next element of a list) is masked from the
// verdicts made there, not by asking accepts() again. Verdicts are made as ids are asked about (ids
// already at −∞ are not), so a state never seen again costs what no cache would. The least recently
// used of more than `capacity` states are dropped.
class MaskCache {
 public:
  // Per id bits: known (asked about in this state), accepted (accepts(its bytes); false for none).
  struct Verdicts {
    std::vector<uint64_t> known, accepted;
  };
  MaskCache() = default;
  explicit MaskCache(size_t capacity) : capacity_(capacity) {}
  // The verdicts of state `key` over `ids` ids: the ones made before (a hit), or none yet (a miss).
  // The reference holds until the next lookup.
  Verdicts& lookup(std::string key, int32_t ids);
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }

 private:
  size_t capacity_ = 32;
  std::list<std::pair<std::string, Verdicts>> entries_;  // most recently used first
  std::unordered_map<std::string, decltype(entries_)::iterator> index_;
  int64_t hits_ = 0, misses_ = 0;
};

// Sets logits[id] = −∞ for every id that may not come next: stop ids stay when StopsNow allows one;
// text ids stay when the language accepts their bytes. A whole text that no longer one extends,
// with a stop allowed, leaves only the stops; with none allowed (min_tokens, or no stop ids) the
// row is left as it is (the minimum, or max_tokens, runs past it). Ids already at −∞ are not
// tried. logits.size() must be vocab.size().
// With a cache and a text whose state has a key, the verdicts come from the cache where made before
// in this state; the mask is the same.
void constrain_text(const TextLanguage& text, const VocabularyBytes& vocab, std::span<const int32_t> stops,
                    bool may_stop, std::span<float> logits, MaskCache* cache = nullptr);

}  // namespace sparseserve
