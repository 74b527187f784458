// Pre-tokenization: splits text into pieces that BPE encodes independently, as a pipeline of steps
// mirroring Hugging Face tokenizers' pre_tokenizers (Sequence of Split / Digits / ByteLevel).
// Regexes run through PCRE2 in UTF + UCP mode, rewritten where Oniguruma (the engine HF tokenizers
// uses) reads them otherwise (oniguruma_to_pcre2), so both engines split identically.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sparseserve {

// Pre-tokenizer regexes of the supported model families (HF tokenizer.json spelling).
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// A Split regex as HF tokenizers reads it (Oniguruma) in PCRE2's syntax, compiled with PCRE2_MULTILINE
// (`^` and `$` are line anchors in both then): `\s` / `\S` as Unicode White_Space, `\w` `\W` `\b`
// `\B` by Oniguruma's word classes (Alphabetic, marks, decimal digits, connector punctuation), `\h`
// / `\H` hex digits, `\v` the vertical tab, `\V` the letter, `\uHHHH` a code point, `{,n}` as
// `{0,n}`. Throws std::invalid_argument for what the two engines read differently and cannot be
// rewritten: `\W`, `\B` or `\H` inside a class, nested and POSIX bracket classes, class
// intersections (&&), the inline options m and s, `\p` / `\P` without braces, `\x` without hex
// digits, `\Q` quoting, an interval followed by `+`. (A case-insensitive match of multi-character
// folds, `(?i:ss)` against "ß", stays PCRE2's: no match; in `(?x)` mode a `[` inside a comment is
// taken as a class.)
std::string oniguruma_to_pcre2(std::string_view pattern);

class PcreRegex;  // compiled pattern, defined in pretokenizer.cc

class PreTokenizer {
 public:
  // What happens to the regex matches (HF SplitDelimiterBehavior).
  enum class Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // Steps run in the order added, each on every piece the previous steps produced.
  // add_split throws std::invalid_argument when the pattern does not compile.
  void add_split(std::string_view pattern, Behavior behavior, bool invert);
  void add_digits(bool individual_digits);
  // ByteLevel: optional prefix space on each piece, then (use_regex) the GPT-2 split.
  void add_byte_level(bool add_prefix_space, bool use_regex);
  bool has_byte_level() const { return has_byte_level_; }

  // Splits `text` (well-formed UTF-8) and appends the non-empty pieces, in order, to `out`.
  void split(std::string_view text, std::vector<std::string>& out) const;

 private:
  struct Step {
    std::shared_ptr<const PcreRegex> regex;  // null: no split
    Behavior behavior = Behavior::kIsolated;
    bool invert = false;
    bool prefix_space = false;
  };
  std::vector<Step> steps_;
  bool has_byte_level_ = false;
};

}  // namespace sparseserve
