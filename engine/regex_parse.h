// Regular expressions for constrained decoding (vLLM's guided_regex): the parser, from a pattern to a
// tree over sets of code points. engine/regex_dfa.h compiles the tree.
//
// Syntax: what Python's re (with re.ASCII) and ECMAScript read alike, as written for Outlines and
// xgrammar:
//   - literals (any UTF-8 text), '.' (any code point but '\n'), classes [a-z0-9_] and [^...] with
//     ranges, \d \w \s \D \W \S (ASCII: [0-9], [A-Za-z0-9_], [ \t\n\r\f\v]) inside and outside them;
//   - escapes \n \t \r \f \v \a \xHH \uHHHH \UHHHHHHHH and any escaped punctuation; \b in a class is
//     backspace;
//   - groups (...), (?:...), (?P<name>...), (?<name>...); alternation |;
//   - quantifiers * + ? {n} {n,} {,m} {n,m}, each greedy or lazy (a trailing ?, the same language);
//     a '{' that starts no quantifier is a literal, as in Python;
//   - '^' at the start and '$' at the end of a top-level branch (the whole output is one match, as
//     re.fullmatch, so they add nothing).
// Refused by name, with the character offset: backreferences, lookaround, word boundaries, \A \Z,
// \N{...}, inline flags, comments (?#...), atomic groups and possessive quantifiers, \p classes,
// anchors elsewhere (one '$' ends a branch: "a$$" is refused), surrogate escapes outside a class
// (inside one they may bound a range, "[^\ud800-\udfff]", and match nothing themselves), and
// repetition counts above kMaxRepeat.
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace sparseserve {

struct RegexNode {
  enum class Kind : uint8_t { kEmpty, kSet, kConcat, kAlt, kRepeat };
  Kind kind = Kind::kEmpty;
  std::vector<std::pair<uint32_t, uint32_t>> set;  // kSet: inclusive code point ranges, sorted, disjoint,
                                                   // none holding a surrogate (D800-DFFF); may be empty
  std::vector<int32_t> kids;                       // kConcat / kAlt: the parts in order; kRepeat: one
  int32_t min = 0, max = 0;                        // kRepeat: the count's bounds; max < 0: unbounded
};

struct RegexTree {
  std::vector<RegexNode> nodes;  // kids index this
  int32_t root = 0;
};

inline constexpr int32_t kMaxRepeat = 10000;        // a quantifier's largest count
inline constexpr size_t kMaxRegexBytes = 16 * 1024;  // a pattern's largest size

// How a pattern meets a text: kFullMatch, the whole text is one match (guided_regex, re.fullmatch);
// kSearch, some part of it is (JSON Schema's "pattern", re.search): a top-level alternative without
// '^' may begin, and one without '$' may end, anywhere in the text. Validators read a schema's
// pattern in their own dialects, whose \d \w \s differ beyond ASCII; kSearch keeps to what they
// all agree on: \D \W \S, and a negated class holding \d \w \s, match ASCII characters only; '.'
// leaves out \r, U+2028 and U+2029 as ECMAScript's does; "{,m}" (Python's {0,m}, ECMAScript's text)
// and a class starting with ']' (ECMAScript's "[]" is empty) are refused.
enum class RegexMode : uint8_t { kFullMatch, kSearch };

// Throws InvalidArgument naming the problem and its character offset.
RegexTree parse_regex(std::string_view pattern, RegexMode mode = RegexMode::kFullMatch);

}  // namespace sparseserve
