// The per-step mask of constrained decoding to a TextLanguage (guided_choice, guided_regex), and the
// stop rule every structured output shares.
#pragma once

#include <cstdint>
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

// Sets logits[id] = −∞ for every id that may not come next: stop ids stay when StopsNow allows one;
// text ids stay when the language accepts their bytes. A whole text that no longer one extends,
// with a stop allowed, leaves only the stops; with none allowed (min_tokens, or no stop ids) the
// row is left as it is (the minimum, or max_tokens, runs past it). Ids already at −∞ are not
// tried. logits.size() must be vocab.size().
void constrain_text(const TextLanguage& text, const VocabularyBytes& vocab, std::span<const int32_t> stops,
                    bool may_stop, std::span<float> logits);

}  // namespace sparseserve
