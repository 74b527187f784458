#include "engine/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <stdexcept>
#include <utility>

#include "common/errors.h"
#include "engine/utf8.h"

namespace sparseserve {

namespace {

// Oniguruma's Unicode \s (the White_Space property), as the body of a character class.
constexpr std::string_view kWhiteSpaceClassBody =
    R"(\t\n\x{0B}\f\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Oniguruma's Unicode word characters, as bodies of a character class (PCRE2 10.42's \w is letters,
// numbers and '_'): inside a class Alphabetic, Mark, Decimal_Number and Connector_Punctuation; as
// \w, \W, \b and \B also the Latin-1 numerics ² ³ ¹ ¼ ½ ¾ (measured against HF's, code point by
// code point: tests/python/test_tokenizer.py).
constexpr std::string_view kClassWordBody = R"(\p{Alphabetic}\p{M}\p{Nd}\p{Pc})";
constexpr std::string_view kWordClassBody = R"(\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{B2}\x{B3}\x{B9}\x{BC}-\x{BE})";

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

// Per-thread JIT stack: long whitespace runs make `\s+(?!\S)` backtrack deeply.
struct ThreadMatchContext {
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ThreadMatchContext() {
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
    if (context != nullptr && stack != nullptr) pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~ThreadMatchContext() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
  }
  ThreadMatchContext(const ThreadMatchContext&) = delete;
  ThreadMatchContext& operator=(const ThreadMatchContext&) = delete;
};

pcre2_match_context* thread_match_context() {
  thread_local ThreadMatchContext ctx;
  return ctx.context;
}

using Segment = std::pair<std::string_view, bool>;  // (text, is_delimiter)

}  // namespace

// A compiled UTF + UCP pattern (JIT-compiled when the platform allows). Thread-safe to match.
class PcreRegex {
 public:
  explicit PcreRegex(std::string_view pattern) {
    const std::string rewritten = oniguruma_to_pcre2(pattern);
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &err_offset, nullptr);
    if (code_ == nullptr) {
      throw std::invalid_argument("bad regex '" + std::string(pattern) + "' at offset " +
                                  std::to_string(err_offset) + ": " + pcre2_message(err));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter on failure
  }
  ~PcreRegex() { pcre2_code_free(code_); }
  PcreRegex(const PcreRegex&) = delete;
  PcreRegex& operator=(const PcreRegex&) = delete;

  // Segments `subject` (well-formed UTF-8) into matches (is_delimiter = true) and the gaps between
  // them, in order, covering it entirely, as HF's Split finds them (the onig crate's find_iter): an
  // empty match is a delimiter too (it cuts the text; its empty piece is dropped later), except one
  // right where the previous match ended, past which the search steps one character.
  void segment(std::string_view subject, pcre2_match_data* md, std::vector<Segment>& out) const {
    const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
    size_t offset = 0;                        // where the next search starts
    size_t prev = 0;                          // the end of the last segment written
    size_t last_end = std::string_view::npos;  // the end of the last match taken
    while (offset <= subject.size()) {
      const int rc = pcre2_match(code_, s, subject.size(), offset, PCRE2_NO_UTF_CHECK, md,
                                 thread_match_context());
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) throw InternalError("pre-tokenizer regex failed: " + pcre2_message(rc));
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t begin = ov[0];
      const size_t end = ov[1];
      if (end == begin && end == last_end) {
        if (offset >= subject.size()) break;
        const int n = utf8::classify(subject.substr(offset));
        offset += static_cast<size_t>(n > 0 ? n : 1);
        continue;
      }
      if (begin > prev) out.emplace_back(subject.substr(prev, begin - prev), false);
      out.emplace_back(subject.substr(begin, end - begin), true);
      prev = offset = last_end = end;
    }
    if (prev < subject.size()) out.emplace_back(subject.substr(prev), false);
  }

 private:
  pcre2_code* code_ = nullptr;
};

std::string oniguruma_to_pcre2(std::string_view pattern) {
  const auto refuse = [&](std::string_view what) {
    throw std::invalid_argument("regex '" + std::string(pattern) + "': " + std::string(what) +
                                " is read differently by Oniguruma (HF tokenizers) and PCRE2; not supported");
  };
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  // A class escape: its body inside a class; outside, a class of it (negated: refused inside).
  const auto put_class = [&](std::string_view body, bool negated, std::string_view escape) {
    if (!in_class) {
      out.append(negated ? "[^" : "[").append(body).append("]");
    } else if (negated) {
      refuse(std::string(escape) + " inside a character class");
    } else {
      out.append(body);
    }
  };
  // \b (at a word boundary) or \B (not at one) as lookarounds on the word class.
  const auto put_boundary = [&](bool at) {
    const std::string word = "[" + std::string(kWordClassBody) + "]";
    out.append("(?:(?<=").append(word).append(at ? ")(?!" : ")(?=").append(word);
    out.append(")|(?<!").append(word).append(at ? ")(?=" : ")(?!").append(word).append("))");
  };
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      switch (e) {
        case 's':
          put_class(kWhiteSpaceClassBody, false, "\\s");
          break;
        case 'S':  // PCRE2's \s also holds U+180E, Oniguruma's (White_Space) not
          if (in_class) {
            out.append("\\S\\x{180E}");
          } else {
            put_class(kWhiteSpaceClassBody, true, "\\S");
          }
          break;
        case 'w':
          put_class(in_class ? kClassWordBody : kWordClassBody, false, "\\w");
          break;
        case 'W':
          put_class(kWordClassBody, true, "\\W");
          break;
        case 'b':  // inside a class: backspace in both
          if (in_class) {
            out.append("\\b");
          } else {
            put_boundary(true);
          }
          break;
        case 'B':
          if (in_class) refuse("\\B inside a character class");
          put_boundary(false);
          break;
        case 'h':
          put_class("0-9A-Fa-f", false, "\\h");
          break;
        case 'H':
          put_class("0-9A-Fa-f", true, "\\H");
          break;
        case 'v':
          out.append("\\x{0B}");
          break;
        case 'V':  // not an escape in Oniguruma: the letter
          out.push_back('V');
          break;
        case 'u': {  // Oniguruma's \uHHHH
          const std::string_view hex = pattern.substr(i + 1, 4);
          if (hex.size() != 4 || !std::all_of(hex.begin(), hex.end(), [](char h) { return std::isxdigit(static_cast<unsigned char>(h)); })) {
            refuse("\\u without four hex digits");
          }
          out.append("\\x{").append(hex).append("}");
          i += 4;
          break;
        }
        case 'p':
        case 'P':
          if (i + 1 >= pattern.size() || pattern[i + 1] != '{') refuse("a property escape without braces");
          out.push_back('\\');
          out.push_back(e);
          break;
        case 'x':
          if (i + 1 >= pattern.size() || (pattern[i + 1] != '{' && !std::isxdigit(static_cast<unsigned char>(pattern[i + 1])))) {
            refuse("\\x without hex digits");
          }
          out.append("\\x");
          break;
        case 'Q':
          refuse("\\Q quoting");
          break;
        default:
          out.push_back('\\');
          out.push_back(e);
      }
      continue;
    }
    if (in_class) {
      if (c == '[') refuse(i + 1 < pattern.size() && pattern[i + 1] == ':' ? "a POSIX bracket class" : "a nested class");
      if (c == '&' && i + 1 < pattern.size() && pattern[i + 1] == '&') refuse("a class intersection (&&)");
      out.push_back(c);
      if (c == ']') in_class = false;
      continue;
    }
    if (c == '(' && i + 2 < pattern.size() && pattern[i + 1] == '?') {
      // Option letters: m is dotall in Oniguruma's syntax and multiline in PCRE2's.
      for (size_t k = i + 2; k < pattern.size() && (std::isalpha(static_cast<unsigned char>(pattern[k])) || pattern[k] == '-'); ++k) {
        if (pattern[k] == 'm' || pattern[k] == 's') refuse("the inline option (?" + std::string(1, pattern[k]) + ")");
      }
    }
    if (c == '{') {  // an interval: {n}, {n,}, {n,m}, or Oniguruma's {,m} (PCRE2 10.42: literal text)
      size_t k = i + 1;
      const size_t lo_digits = std::find_if_not(pattern.begin() + static_cast<std::ptrdiff_t>(k), pattern.end(),
                                                [](char d) { return std::isdigit(static_cast<unsigned char>(d)); }) -
                               pattern.begin() - static_cast<std::ptrdiff_t>(k);
      k += lo_digits;
      size_t hi_digits = 0;
      const bool comma = k < pattern.size() && pattern[k] == ',';
      if (comma) {
        ++k;
        while (k + hi_digits < pattern.size() && std::isdigit(static_cast<unsigned char>(pattern[k + hi_digits]))) ++hi_digits;
        k += hi_digits;
      }
      if (k < pattern.size() && pattern[k] == '}' && lo_digits + hi_digits > 0) {
        out.append("{").append(lo_digits == 0 ? "0" : "").append(pattern.substr(i + 1, k - i));
        i = k;
        // Oniguruma: a repeat of the repeat; PCRE2: possessive.
        if (i + 1 < pattern.size() && pattern[i + 1] == '+') refuse("an interval followed by +");
        continue;
      }
    }
    out.push_back(c);
    if (c == '[') {
      in_class = true;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out.push_back(pattern[++i]);
    }
  }
  return out;
}

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

void PreTokenizer::add_split(std::string_view pattern, Behavior behavior, bool invert) {
  Step step;
  step.regex = std::make_shared<const PcreRegex>(pattern);
  step.behavior = behavior;
  step.invert = invert;
  steps_.push_back(std::move(step));
}

void PreTokenizer::add_digits(bool individual_digits) {
  // HF Digits splits on Rust's char::is_numeric (categories Nd, Nl, No: \p{N}) of Unicode 15; the
  // numerics Unicode 15 added (Kawi, Kaktovik, Nag Mundari) are listed for a PCRE2 of Unicode 14.
  constexpr std::string_view kNumeric = R"([\p{N}\x{11F50}-\x{11F59}\x{1D2C0}-\x{1D2D3}\x{1E4F0}-\x{1E4F9}])";
  add_split(std::string(kNumeric) + (individual_digits ? "" : "+"), Behavior::kIsolated, false);
}

void PreTokenizer::add_byte_level(bool add_prefix_space, bool use_regex) {
  Step step;
  if (use_regex) step.regex = std::make_shared<const PcreRegex>(kGpt2Pattern);
  step.prefix_space = add_prefix_space;
  steps_.push_back(std::move(step));
  has_byte_level_ = true;
}

namespace {

// Applies a split behavior to the segments of one piece (HF SplitDelimiterBehavior semantics) and
// appends the non-empty resulting pieces.
void apply_behavior(const std::vector<Segment>& segs, PreTokenizer::Behavior behavior,
                    std::vector<std::string>& out) {
  using B = PreTokenizer::Behavior;
  std::vector<std::string> pieces;
  bool previous_delim = false;
  switch (behavior) {
    case B::kIsolated:
      for (const auto& [text, delim] : segs) pieces.emplace_back(text);
      break;
    case B::kRemoved:
      for (const auto& [text, delim] : segs) {
        if (!delim) pieces.emplace_back(text);
      }
      break;
    case B::kMergedWithPrevious:
      for (const auto& [text, delim] : segs) {
        if (delim && !previous_delim && !pieces.empty()) {
          pieces.back().append(text);
        } else {
          pieces.emplace_back(text);
        }
        previous_delim = delim;
      }
      break;
    case B::kMergedWithNext:
      // Mirror image of kMergedWithPrevious: walk backwards, prepend the delimiter to what follows.
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->second && !previous_delim && !pieces.empty()) {
          pieces.back().insert(0, it->first);
        } else {
          pieces.emplace_back(it->first);
        }
        previous_delim = it->second;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    case B::kContiguous:
      for (size_t i = 0; i < segs.size(); ++i) {
        if (i > 0 && segs[i].second == previous_delim) {
          pieces.back().append(segs[i].first);
        } else {
          pieces.emplace_back(segs[i].first);
        }
        previous_delim = segs[i].second;
      }
      break;
  }
  for (auto& p : pieces) {
    if (!p.empty()) out.push_back(std::move(p));
  }
}

}  // namespace

void PreTokenizer::split(std::string_view text, std::vector<std::string>& out) const {
  if (text.empty()) return;
  std::vector<std::string> current;
  current.emplace_back(text);
  std::vector<std::string> next;
  std::vector<Segment> segs;
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  if (md == nullptr) throw std::bad_alloc();
  try {
    for (const Step& step : steps_) {
      next.clear();
      for (std::string& piece : current) {
        if (step.prefix_space && piece.front() != ' ') piece.insert(0, 1, ' ');
        if (!step.regex) {
          next.push_back(std::move(piece));
          continue;
        }
        segs.clear();
        step.regex->segment(piece, md, segs);
        if (step.invert) {
          for (auto& s : segs) s.second = !s.second;
        }
        apply_behavior(segs, step.behavior, next);
      }
      current.swap(next);
    }
  } catch (...) {
    pcre2_match_data_free(md);
    throw;
  }
  pcre2_match_data_free(md);
  for (auto& p : current) out.push_back(std::move(p));
}

}  // namespace sparseserve
