// A compiled regex (syntax: engine/regex_parse.h): a deterministic automaton over UTF-8 bytes, trimmed
// so that every state it keeps can still reach a match. A text is the beginning of some match exactly
// when walking its bytes never leaves the automaton, so constrained decoding that only takes such
// bytes never reaches a dead end; the whole output must be one match (re.fullmatch), in valid UTF-8.
//
// How this works: each set of code points becomes UTF-8 byte-range sequences (a range is split where
// its ends' encodings differ in length, then where a trailing byte would not span its whole range),
// the tree a Thompson NFA over byte ranges, the NFA a DFA by subset construction over byte classes
// (bytes that no range tells apart share one column), and the states that reach no accepting state
// are dropped. The cost of a compile is bounded by kMaxNfaStates, kMaxStates and kMaxWork.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/regex_parse.h"
#include "engine/text_language.h"

namespace sparseserve {

class RegexDfa {
 public:
  static constexpr int32_t kMaxNfaStates = 100'000;
  static constexpr int32_t kMaxStates = 32'768;
  static constexpr int64_t kMaxWork = 20'000'000;  // NFA states visited while building the DFA
  static constexpr int32_t kDead = -1;

  // Throws InvalidArgument for a pattern parse_regex refuses, one past the limits above (naming
  // which), or one that matches no text at all.
  static RegexDfa compile(std::string_view pattern, RegexMode mode = RegexMode::kFullMatch);
  // The texts both match (a product automaton, trimmed the same way). InvalidArgument when it would
  // pass kMaxStates or no text matches both.
  static RegexDfa intersect(const RegexDfa& a, const RegexDfa& b);

  static constexpr int32_t start() { return 0; }
  int32_t num_states() const { return static_cast<int32_t>(accepting_.size()); }
  // The state after `byte` from a state (not kDead), or kDead when no match continues with it.
  int32_t next(int32_t state, uint8_t byte) const {
    return table_[static_cast<size_t>(state) * num_classes_ + class_of_[byte]];
  }
  // The state after bytes from a state, kDead once one of them leaves.
  int32_t walk(int32_t state, std::string_view bytes) const;
  bool accepting(int32_t state) const { return accepting_[static_cast<size_t>(state)] != 0; }
  bool extendable(int32_t state) const { return extendable_[static_cast<size_t>(state)] != 0; }
  // The whole text is one match.
  bool matches(std::string_view text) const;

 private:
  // From an automaton whose states are all reachable from state 0 (raw_table: [state][class], kDead
  // for none): the states that reach an accepting one, renumbered in order (0 stays the start).
  static RegexDfa trimmed(const std::array<uint16_t, 256>& class_of, size_t num_classes,
                          const std::vector<int32_t>& raw_table, const std::vector<uint8_t>& raw_accepting);

  std::array<uint16_t, 256> class_of_{};
  size_t num_classes_ = 0;
  std::vector<int32_t> table_;  // [state][class]: the next state or kDead
  std::vector<uint8_t> accepting_, extendable_;
};

// The text generated so far under a regex.
class RegexText final : public TextLanguage {
 public:
  explicit RegexText(std::shared_ptr<const RegexDfa> dfa) : dfa_(std::move(dfa)) {}
  bool accepts(std::string_view bytes) const override { return dfa_->walk(state_, bytes) != RegexDfa::kDead; }
  bool push(std::string_view bytes) override;
  bool complete() const override { return dfa_->accepting(state_); }
  bool extendable() const override { return dfa_->extendable(state_); }

 private:
  std::shared_ptr<const RegexDfa> dfa_;
  int32_t state_ = RegexDfa::start();
};

}  // namespace sparseserve
