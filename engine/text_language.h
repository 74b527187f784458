// A language of whole outputs seen through the text generated so far, for constrained decoding
// (engine/text_constraint.h): vLLM's guided_choice (engine/choice_constraint.h), guided_regex
// (engine/regex_dfa.h) and guided_grammar (engine/grammar.h). Implementations never hold a text no whole output begins with.
#pragma once

#include <string>
#include <string_view>

namespace sparseserve {

class TextLanguage {
 public:
  virtual ~TextLanguage() = default;
  // Some whole output begins with the text + bytes.
  virtual bool accepts(std::string_view bytes) const = 0;
  // Appends bytes; false (text unchanged) when !accepts(bytes).
  virtual bool push(std::string_view bytes) = 0;
  virtual bool complete() const = 0;    // the text is a whole output
  virtual bool extendable() const = 0;  // a longer whole output begins with the text
  // A key of the state the text is in: at two moments of one object's text, equal non-empty keys
  // mean accepts() takes the same bytes (constrain_text then reuses its verdicts: MaskCache).
  // Empty: no key.
  virtual std::string state_key() const { return {}; }
};

}  // namespace sparseserve
