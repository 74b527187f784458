// Context-free grammars in llama.cpp's GBNF (the notation vLLM's guided_grammar and xgrammar's EBNF
// share) for constrained decoding: the output must be one whole derivation of the rule `root`.
//
// Notation (llama.cpp grammars/README.md):
//   name ::= alternatives          a rule; names are letters, digits, '-' and '_'; `root` is required
//   a b c                          a sequence;  a | b  alternatives;  ( ... )  a group
//   "text"                         a literal (escapes \n \r \t \\ \" \[ \] \xHH \uHHHH \UHHHHHHHH)
//   [a-z_]  [^"\\]                 a character class, or its complement;  .  any character
//   x*  x+  x?  x{m}  x{m,}  x{m,n}  repetition
//   # ...                          a comment to the end of the line
// A rule's body ends at a line break outside parentheses, unless the next line starts with '|' (a
// break right after `::=` is allowed).
// Matching is over Unicode code points of the UTF-8 output.
//
// How this works: repetitions and groups become generated rules, so a rule is a list of
// alternatives, each a sequence of character sets and rule references. The text generated so far is
// a set of stacks, as in llama.cpp: a stack holds the positions still to be matched, the top first,
// and its top is always a character set (references are expanded until they are); a code point keeps
// the stacks whose top admits it, each advanced past it. The text is whole when some stack is empty.
// Left-recursive grammars are refused (the expansion would not end).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/text_language.h"

namespace sparseserve {

// UTF-8 as the output is read: the code points a sequence that begins with `seq` (its lead byte
// first, 1 to 4 bytes) may be, [lo, hi] (lo == hi when whole); false when no valid code point
// (not overlong, no surrogate, at most U+10FFFF) begins so.
bool utf8_range(std::string_view seq, uint32_t& lo, uint32_t& hi);

// The unfinished sequence a text may end with.
struct Utf8Tail {
  bool partial = false;
  size_t at = 0;           // where its bytes begin
  uint32_t lo = 0, hi = 0;  // what it may become (utf8_range)
};

// Appends text's whole code points to cps and describes an unfinished last sequence in `tail`;
// false when the text is not valid UTF-8 (or its tail cannot become a code point).
bool decode_utf8(std::string_view text, std::vector<uint32_t>& cps, Utf8Tail& tail);

class Grammar {
 public:
  static constexpr size_t kMaxElements = 100'000;  // after repetitions are written out
  static constexpr int32_t kMaxRepeat = 1'000;     // the largest m or n of x{m,n}
  static constexpr size_t kMaxStacks = 4'096;      // distinct stacks a text may have (else an error)
  static constexpr size_t kMaxRules = 10'000;      // rules, those groups and repetitions make included
  static constexpr int32_t kMaxNesting = 256;      // parentheses inside parentheses
  static constexpr size_t kMaxExpansion = 4'096;   // stacks expanded at one position

  // Throws InvalidArgument naming the problem and its line: a syntax error, an undefined rule, no
  // `root`, a rule defined twice, left recursion, a root that derives no text, or a grammar past
  // the limits above (which also bound the recursion of parsing and matching). Alternatives that
  // can never finish (through a rule that only recurses, a class that admits nothing, a surrogate)
  // are dropped, so that every text the matcher accepts can be completed.
  static Grammar parse(std::string_view text);

  // One element of a sequence: a set of code points (ranges, inclusive; `negated`: all others), or
  // a reference to a rule.
  struct Element {
    int32_t rule = -1;  // ≥ 0: a rule reference; −1: a character set
    bool negated = false;
    std::vector<std::pair<uint32_t, uint32_t>> ranges;
    bool admits(uint32_t cp) const;
    bool admits_any(uint32_t lo, uint32_t hi) const;  // some code point in [lo, hi]
  };
  using Sequence = std::vector<Element>;

  int32_t root() const { return root_; }
  const std::vector<Sequence>& alternatives(int32_t rule) const { return rules_[static_cast<size_t>(rule)]; }
  // The whole text is one derivation of root (tests and checks).
  bool matches(std::string_view text) const;

 private:
  std::vector<std::vector<Sequence>> rules_;  // [rule][alternative]: a sequence (empty: ε)
  int32_t root_ = -1;
  friend class GrammarParser;
};

// The text generated so far under a grammar. Bytes after which the text would have more than
// Grammar::kMaxStacks parses are not accepted (the constructor throws InvalidArgument when the
// empty text already has). accepts() is const but works in scratch space of this object: one
// thread at a time per object.
//
// accepts() is asked for every id of the vocabulary each step, so it does not build stack sets: it
// searches depth first for one way to consume the bytes, its stacks sharing their tails (nodes that
// point to their parent, the committed stacks' nodes built once per push), and stops at the first.
// Past kMaxSearchSteps steps (a grammar ambiguous within one token) it falls back to the sets.
// The sets' limits (kMaxStacks, kMaxExpansion) do not bound the search: with a grammar that reaches
// them, push() may refuse bytes accepts() took; the engine then ends that request with an error.
// The searches between two pushes (one step's mask) share a budget, kMaxMaskSteps, a fallback
// counting as kMaxSearchSteps: past it accepts() throws InvalidArgument, so a grammar ambiguous
// within every token cannot hold the engine for seconds a step.
class GrammarText final : public TextLanguage {
 public:
  explicit GrammarText(std::shared_ptr<const Grammar> grammar);
  bool accepts(std::string_view bytes) const override;
  bool push(std::string_view bytes) override;
  bool complete() const override;
  bool extendable() const override;
  // The stack set and the unfinished UTF-8 bytes: what accepts() depends on.
  std::string state_key() const override;

  // A position in a rule: alternative `alt` of rule `rule`, element `index`.
  struct Pos {
    int32_t rule, alt, index;
    auto operator<=>(const Pos&) const = default;
  };
  using Stack = std::vector<Pos>;  // the top is the back

 private:
  static constexpr int64_t kMaxSearchSteps = 20'000;
  // A JSON-like grammar's mask inside a string takes ~1.5M steps on a 49k vocabulary: room for a
  // 152k one (Qwen2.5) with several live stacks. ~0.5 s on one core.
  static constexpr int64_t kMaxMaskSteps = 40'000'000;

  // The stacks after `bytes`, or false when some code point (or the text's last, unfinished UTF-8
  // sequence) is admitted by no stack. `partial` holds the bytes of an unfinished sequence.
  bool run(std::string_view bytes, std::vector<Stack>& stacks, std::string& partial) const;
  bool try_accepts(std::string_view bytes) const;  // accepts() without its catch
  // The depth-first search of accepts(): 1 consumed, 0 not, −1 past kMaxSearchSteps.
  int search(std::string_view bytes) const;
  int consume(int32_t node, size_t i) const;  // code point i onwards from a stack whose top is a set
  int expand_consume(int32_t node, size_t i) const;  // the same from a stack still to be expanded
  int32_t push_node(Pos pos, int32_t parent) const;
  void rebuild_nodes();  // nodes_ and tops_ from stacks_

  struct Node {
    Pos pos;
    int32_t parent;  // −1: the bottom
  };

  std::shared_ptr<const Grammar> grammar_;
  std::vector<Stack> stacks_;  // sorted, distinct
  std::string partial_;        // an unfinished UTF-8 sequence at the end of the text (≤ 3 bytes)
  // The committed stacks as nodes: nodes_[0 .. base_) and their tops (−1: an empty stack); a search
  // appends after base_ and cuts back. cps_/range_ hold the code points a search consumes.
  mutable std::vector<Node> nodes_;
  size_t base_ = 0;
  std::vector<int32_t> tops_;
  mutable std::vector<uint32_t> cps_;
  mutable Utf8Tail tail_;
  mutable int64_t steps_ = 0;
  mutable int64_t mask_steps_ = 0;  // search steps since the last push
};

}  // namespace sparseserve
