#include "engine/choice_constraint.h"

#include <algorithm>

#include "common/errors.h"

namespace sparseserve {

std::shared_ptr<const std::vector<std::string>> ChoiceText::sorted(std::vector<std::string> choices) {
  if (choices.empty()) throw InvalidArgument("guided_choice lists no choice");
  if (choices.size() > kMaxChoices) {
    throw InvalidArgument("guided_choice lists " + std::to_string(choices.size()) + " choices; at most " +
                          std::to_string(kMaxChoices));
  }
  if (std::any_of(choices.begin(), choices.end(), [](const std::string& c) { return c.empty(); })) {
    throw InvalidArgument("guided_choice has an empty choice");
  }
  std::sort(choices.begin(), choices.end());
  choices.erase(std::unique(choices.begin(), choices.end()), choices.end());
  return std::make_shared<const std::vector<std::string>>(std::move(choices));
}

ChoiceText::ChoiceText(std::shared_ptr<const std::vector<std::string>> sorted_choices)
    : choices_(std::move(sorted_choices)) {}

bool ChoiceText::accepts(std::string_view bytes) const {
  // The first choice not below text_ + bytes begins with it, if any does (the choices are sorted).
  const auto below = [&](const std::string& choice) {
    const std::string_view c(choice);
    const std::string_view head = c.substr(0, std::min(c.size(), text_.size()));
    if (head != text_) return head < std::string_view(text_);
    return c.substr(head.size()) < bytes;
  };
  const auto it = std::partition_point(choices_->begin(), choices_->end(), below);
  return it != choices_->end() && std::string_view(*it).substr(0, text_.size()) == text_ &&
         std::string_view(*it).substr(text_.size(), bytes.size()) == bytes;
}

bool ChoiceText::push(std::string_view bytes) {
  if (!accepts(bytes)) return false;
  text_ += bytes;
  return true;
}

bool ChoiceText::complete() const { return std::binary_search(choices_->begin(), choices_->end(), text_); }

bool ChoiceText::extendable() const {
  const auto it = std::upper_bound(choices_->begin(), choices_->end(), text_);
  return it != choices_->end() && std::string_view(*it).substr(0, text_.size()) == text_;
}

}  // namespace sparseserve
