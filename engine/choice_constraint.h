// vLLM's guided_choice: the output is exactly one of a list of strings, as a TextLanguage
// (engine/text_constraint.h masks each step: every id whose bytes would leave the text no longer the
// beginning of some choice gets −∞, and the stop ids may end it only once it is a whole choice).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/text_language.h"

namespace sparseserve {

// The text so far against the choices (kept sorted, shared by the requests of one call).
class ChoiceText final : public TextLanguage {
 public:
  static constexpr size_t kMaxChoices = 1024;
  // Throws InvalidArgument for an empty list, more than kMaxChoices or an empty choice.
  static std::shared_ptr<const std::vector<std::string>> sorted(std::vector<std::string> choices);
  explicit ChoiceText(std::shared_ptr<const std::vector<std::string>> sorted_choices);

  bool accepts(std::string_view bytes) const override;
  bool push(std::string_view bytes) override;
  bool complete() const override;
  bool extendable() const override;

 private:
  std::shared_ptr<const std::vector<std::string>> choices_;
  std::string text_;
};

}  // namespace sparseserve
