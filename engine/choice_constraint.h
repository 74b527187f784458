// vLLM's guided_choice: the output is exactly one of a list of strings. Before each sampled token,
// every id whose bytes would leave the text no longer the beginning of some choice gets −∞, and
// the stop ids may end it only once it is a whole choice (and then nothing else may follow when
// no longer choice begins with it).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/vocabulary_bytes.h"

namespace sparseserve {

// The text so far against the choices (kept sorted, shared by the requests of one call).
class ChoiceText {
 public:
  static constexpr size_t kMaxChoices = 1024;
  // Throws InvalidArgument for an empty list, more than kMaxChoices or an empty choice.
  static std::shared_ptr<const std::vector<std::string>> sorted(std::vector<std::string> choices);
  explicit ChoiceText(std::shared_ptr<const std::vector<std::string>> sorted_choices);

  // Some choice begins with the text + bytes.
  bool accepts(std::string_view bytes) const;
  // Appends bytes; false (text unchanged) when no choice begins with the result.
  bool push(std::string_view bytes);
  bool complete() const;    // the text is a choice
  bool extendable() const;  // a longer choice begins with the text

 private:
  std::shared_ptr<const std::vector<std::string>> choices_;
  std::string text_;
};

// Sets logits[id] = −∞ for every id that may not come next: stop ids stay when the text is a whole
// choice and may_stop; text ids stay when some choice begins with the text + their bytes. A whole
// choice that no longer one extends, with a stop allowed, leaves only the stops; with none allowed
// (min_tokens, or no stop ids) the row is left as it is (the minimum, or max_tokens, runs past it).
void constrain_choice(const ChoiceText& text, const VocabularyBytes& vocab, std::span<const int32_t> stops,
                      bool may_stop, std::span<float> logits);

}  // namespace sparseserve
