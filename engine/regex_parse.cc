#include "engine/regex_parse.h"

#include <algorithm>
#include <string>

#include "common/errors.h"
#include "engine/utf8.h"

namespace sparseserve {

namespace {

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;
constexpr uint32_t kMaxCode = 0x10FFFF;
constexpr uint32_t kSurrogateLo = 0xD800, kSurrogateHi = 0xDFFF;
constexpr int kMaxNesting = 256;  // groups inside groups (the compiler recurses over the tree)

// Sorted, merged, surrogates cut out.
Ranges normalize(Ranges r) {
  std::sort(r.begin(), r.end());
  Ranges merged;
  for (const auto& [lo, hi] : r) {
    if (!merged.empty() && lo <= merged.back().second + 1) {
      merged.back().second = std::max(merged.back().second, hi);
    } else {
      merged.emplace_back(lo, hi);
    }
  }
  Ranges out;
  for (const auto& [lo, hi] : merged) {
    if (lo < kSurrogateLo) out.emplace_back(lo, std::min(hi, kSurrogateLo - 1));
    if (hi > kSurrogateHi) out.emplace_back(std::max(lo, kSurrogateHi + 1), hi);
  }
  return out;
}

// Every code point (surrogates aside) not in r (normalized).
Ranges complement(const Ranges& r) {
  Ranges out;
  uint32_t next = 0;
  for (const auto& [lo, hi] : r) {
    if (lo > next) out.emplace_back(next, lo - 1);
    next = hi + 1;
  }
  if (next <= kMaxCode) out.emplace_back(next, kMaxCode);
  return normalize(std::move(out));
}

// Within ASCII: what a negated \d \w \s means in every dialect (Python's and Rust's Unicode
// classes hold more digits, letters and spaces than ECMAScript's or re.ASCII's).
Ranges ascii_complement(const Ranges& r) {
  Ranges out;
  for (const auto& [lo, hi] : complement(r)) {
    if (lo <= 0x7F) out.emplace_back(lo, std::min<uint32_t>(hi, 0x7F));
  }
  return out;
}

// \d \w \s (ASCII) and their complements: all other code points, or in kSearch mode (JSON Schema,
// whose validators differ) only the other ASCII ones.
Ranges class_escape(uint32_t c, bool search) {
  Ranges r;
  switch (c | 0x20) {  // lower case
    case 'd': r = {{'0', '9'}}; break;
    case 'w': r = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}}; break;
    default: r = {{'\t', '\r'}, {' ', ' '}}; break;  // s: \t \n \v \f \r and space
  }
  return c >= 'a' ? r : search ? ascii_complement(r) : complement(r);
}

bool is_hex(uint32_t c) { return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f'); }
uint32_t hex_value(uint32_t c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

// One escape's meaning: a code point, or a set (\d and kin).
struct Escape {
  bool is_set = false;
  uint32_t code = 0;
  Ranges set;
};

class Parser {
 public:
  Parser(std::string_view pattern, RegexMode mode) : search_(mode == RegexMode::kSearch) {
    if (pattern.size() > kMaxRegexBytes) {
      throw InvalidArgument("the regex has " + std::to_string(pattern.size()) + " bytes; at most " +
                            std::to_string(kMaxRegexBytes));
    }
    for (size_t i = 0; i < pattern.size();) {
      const int n = utf8::classify(pattern.substr(i));
      if (n <= 0) throw InvalidArgument("the regex is not valid UTF-8 (byte " + std::to_string(i) + ")");
      cp_.push_back(utf8::decode(pattern.substr(i), n));
      i += static_cast<size_t>(n);
    }
  }

  RegexTree run() {
    tree_.root = alternation();
    if (pos_ < cp_.size()) fail("unbalanced parenthesis", pos_);  // only a ')' stops the top level early
    return std::move(tree_);
  }

 private:
  [[noreturn]] void fail(const std::string& what, size_t at) const {
    throw InvalidArgument("regex: " + what + " at position " + std::to_string(at));
  }
  bool more(size_t ahead = 0) const { return pos_ + ahead < cp_.size(); }
  uint32_t peek(size_t ahead = 0) const { return more(ahead) ? cp_[pos_ + ahead] : 0xFFFFFFFFu; }

  int32_t add(RegexNode n) {
    tree_.nodes.push_back(std::move(n));
    return static_cast<int32_t>(tree_.nodes.size()) - 1;
  }
  int32_t add_set(Ranges set) {
    RegexNode n;
    n.kind = RegexNode::Kind::kSet;
    n.set = normalize(std::move(set));
    return add(std::move(n));
  }
  int32_t add_list(RegexNode::Kind kind, std::vector<int32_t> kids) {
    if (kids.empty()) return add(RegexNode{});
    if (kids.size() == 1) return kids[0];
    RegexNode n;
    n.kind = kind;
    n.kids = std::move(kids);
    return add(std::move(n));
  }

  int32_t alternation() {
    std::vector<int32_t> branches{concatenation()};
    while (peek() == '|') {
      ++pos_;
      branches.push_back(concatenation());
    }
    return add_list(RegexNode::Kind::kAlt, std::move(branches));
  }

  int32_t concatenation() {
    std::vector<int32_t> parts;
    bool starts = false, ends = false;  // anchored by '^' / '$'
    while (more() && peek() != '|' && peek() != ')') {
      const uint32_t c = peek();
      if (c == '^' || c == '$') {
        const bool ok = depth_ == 0 && (c == '^' ? parts.empty() : (!more(1) || peek(1) == '|'));
        if (!ok) fail(std::string("'") + static_cast<char>(c) + "' is supported only at the start ('^') or the end ('$') of the pattern or of a top-level alternative", pos_);
        (c == '^' ? starts : ends) = true;
        ++pos_;  // a quantifier after it is "nothing to repeat", below
        continue;
      }
      if (c == '*' || c == '+' || c == '?' || counted_quantifier_at(pos_)) fail("nothing to repeat", pos_);
      int32_t item = atom();
      if (int32_t lo = 0, hi = 0; quantifier(lo, hi)) {
        if (peek() == '?') ++pos_;  // lazy: the same set of whole matches
        if (peek() == '*' || peek() == '+' || peek() == '?' || counted_quantifier_at(pos_)) {
          fail("multiple repeat (possessive quantifiers are not supported)", pos_);
        }
        RegexNode n;
        n.kind = RegexNode::Kind::kRepeat;
        n.kids = {item};
        n.min = lo;
        n.max = hi;
        item = add(std::move(n));
      }
      parts.push_back(item);
    }
    if (search_ && depth_ == 0) {  // any text before and after an unanchored alternative
      if (!starts) parts.insert(parts.begin(), any_text());
      if (!ends) parts.push_back(any_text());
    }
    return add_list(RegexNode::Kind::kConcat, std::move(parts));
  }
  int32_t any_text() {
    RegexNode n;
    n.kind = RegexNode::Kind::kRepeat;
    n.kids = {add_set({{0, kMaxCode}})};
    n.max = -1;
    return add(std::move(n));
  }

  // A counted quantifier at p: '{' digits* (',' digits*)? '}', not "{}" (Python's rule; any other
  // '{' is a literal). Its bounds in lo / hi (hi < 0: unbounded); pos_ is not moved.
  bool read_count(size_t p, int32_t& lo, int32_t& hi, size_t& end) const {
    if (p >= cp_.size() || cp_[p] != '{') return false;
    const auto digits = [&](size_t& q, int64_t& v, bool& any) {
      while (q < cp_.size() && cp_[q] >= '0' && cp_[q] <= '9') {
        v = std::min<int64_t>(v * 10 + (cp_[q] - '0'), int64_t{1} << 40);
        any = true;
        ++q;
      }
    };
    size_t q = p + 1;
    int64_t a = 0, b = 0;
    bool has_a = false, has_b = false, comma = false;
    digits(q, a, has_a);
    if (q < cp_.size() && cp_[q] == ',') {
      comma = true;
      ++q;
      digits(q, b, has_b);
    }
    if (q >= cp_.size() || cp_[q] != '}' || (!has_a && !comma)) return false;
    // "{,m}": Python's {0,m}, ECMAScript's literal text; a JSON Schema pattern is read both ways.
    if (search_ && !has_a) fail("'{,m}' is a quantifier in Python but text in ECMAScript: write {0,m}", p);
    if (!comma) b = a, has_b = true;
    if (a > kMaxRepeat || (has_b && b > kMaxRepeat)) {
      fail("a repetition count above " + std::to_string(kMaxRepeat), p);
    }
    if (has_b && b < a) fail("min repeat greater than max repeat", p);
    lo = static_cast<int32_t>(a);
    hi = has_b ? static_cast<int32_t>(b) : -1;
    end = q + 1;
    return true;
  }
  bool counted_quantifier_at(size_t p) const {
    int32_t lo = 0, hi = 0;
    size_t end = 0;
    return read_count(p, lo, hi, end);
  }
  // Consumes a quantifier after an atom, if one follows.
  bool quantifier(int32_t& lo, int32_t& hi) {
    switch (peek()) {
      case '*': lo = 0, hi = -1; break;
      case '+': lo = 1, hi = -1; break;
      case '?': lo = 0, hi = 1; break;
      default: {
        size_t end = 0;
        if (!read_count(pos_, lo, hi, end)) return false;
        pos_ = end;
        return true;
      }
    }
    ++pos_;
    return true;
  }

  int32_t atom() {
    const size_t at = pos_;
    const uint32_t c = cp_[pos_++];
    switch (c) {
      case '(': return group(at);
      case '[': return add_set(class_body(at));
      case '.':  // Python: all but \n; ECMAScript (JSON Schema) also leaves out \r, U+2028, U+2029
        if (search_) return add_set({{0, '\n' - 1}, {'\n' + 1, '\r' - 1}, {'\r' + 1, 0x2027}, {0x202A, kMaxCode}});
        return add_set({{0, '\n' - 1}, {'\n' + 1, kMaxCode}});
      case '\\': {
        Escape e = escape(/*in_class=*/false);
        return e.is_set ? add_set(std::move(e.set)) : add_set({{e.code, e.code}});
      }
      default: return add_set({{c, c}});
    }
  }

  int32_t group(size_t at) {
    if (peek() == '?') {
      ++pos_;
      const uint32_t k = peek();
      if (k == ':') {
        ++pos_;
      } else if ((k == 'P' && peek(1) == '<') || (k == '<' && peek(1) != '=' && peek(1) != '!')) {
        pos_ += k == 'P' ? 2 : 1;
        const size_t name = pos_;
        while (more() && peek() != '>') ++pos_;
        if (!more() || pos_ == name) fail("bad group name", name);
        ++pos_;
      } else if (k == '=' || k == '!' || k == '<') {
        fail("lookaround assertions are not supported", at);
      } else if (k == 'P' && peek(1) == '=') {
        fail("backreferences are not supported", at);
      } else if (k == '>') {
        fail("atomic groups are not supported", at);
      } else {
        fail("inline flags and other (? groups are not supported", at);
      }
    }
    if (++depth_ > kMaxNesting) fail("groups nested deeper than " + std::to_string(kMaxNesting), at);
    const int32_t inner = alternation();
    if (peek() != ')') fail("missing ), unterminated subpattern", at);
    ++pos_;
    --depth_;
    return inner;
  }

  Ranges class_body(size_t at) {
    Ranges r;
    bool has_class_escape = false;  // \d \w \s or their complements inside
    const bool negate = peek() == '^';
    if (negate) ++pos_;
    // "[]...]": Python's ']' first in the class, ECMAScript's empty class "[]" (or "[^]": any).
    if (search_ && peek() == ']') fail("a class starting with ']' is read differently by Python and ECMAScript: escape it as '\\]'", at);
    for (bool first = true;; first = false) {
      if (!more()) fail("unterminated character set", at);
      if (peek() == ']' && !first) {
        ++pos_;
        break;
      }
      const size_t item_at = pos_;
      Escape lo = class_item();
      const bool range = peek() == '-' && more(1) && peek(1) != ']';
      if (lo.is_set) {
        if (range) fail("bad character range", item_at);
        has_class_escape = true;
        r.insert(r.end(), lo.set.begin(), lo.set.end());
        continue;
      }
      if (!range) {
        r.emplace_back(lo.code, lo.code);
        continue;
      }
      ++pos_;  // '-'
      const Escape hi = class_item();
      if (hi.is_set || hi.code < lo.code) fail("bad character range", item_at);
      r.emplace_back(lo.code, hi.code);
    }
    r = normalize(std::move(r));
    if (negate && search_ && has_class_escape) return ascii_complement(r);  // as \D above
    return negate ? complement(r) : r;
  }
  Escape class_item() {
    const uint32_t c = cp_[pos_++];
    if (c == '\\') return escape(/*in_class=*/true);
    return Escape{false, c, {}};
  }

  // After a backslash.
  Escape escape(bool in_class) {
    const size_t at = pos_ - 1;
    if (!more()) fail("the pattern ends with a backslash", at);
    const uint32_t c = cp_[pos_++];
    const auto code = [](uint32_t v) { return Escape{false, v, {}}; };
    switch (c) {
      case 'd': case 'D': case 'w': case 'W': case 's': case 'S': return Escape{true, 0, class_escape(c, search_)};
      case 'n': return code('\n');
      case 't': return code('\t');
      case 'r': return code('\r');
      case 'f': return code('\f');
      case 'v': return code('\v');
      case 'a': return code('\a');
      case 'b':
        if (in_class) return code('\b');
        fail("word boundaries (\\b) are not supported", at);
      case 'x': case 'u': case 'U': {
        const int n = c == 'x' ? 2 : c == 'u' ? 4 : 8;
        uint32_t v = 0;
        for (int i = 0; i < n; ++i) {
          if (!is_hex(peek())) fail(std::string("\\") + static_cast<char>(c) + " needs " + std::to_string(n) + " hex digits", at);
          v = v * 16 + hex_value(cp_[pos_++]);
        }
        // A surrogate only bounds a class's range (normalize cuts surrogates out): "[^\ud800-\udfff]".
        if (v > kMaxCode || (!in_class && v >= kSurrogateLo && v <= kSurrogateHi)) {
          fail("the escape is not a Unicode scalar value", at);
        }
        return code(v);
      }
      default: break;
    }
    if (c >= '0' && c <= '9') fail("backreferences and octal escapes are not supported", at);
    if (c == 'p' || c == 'P') fail("Unicode property classes (\\p) are not supported", at);
    if (c < 0x80 && ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')) {
      fail(std::string("bad escape \\") + static_cast<char>(c) + " (anchors, \\N and other letter escapes are not supported)", at);
    }
    return code(c);  // escaped punctuation, space or any non-ASCII character: itself
  }

  bool search_;
  std::vector<uint32_t> cp_;
  size_t pos_ = 0;
  int depth_ = 0;
  RegexTree tree_;
};

}  // namespace

RegexTree parse_regex(std::string_view pattern, RegexMode mode) { return Parser(pattern, mode).run(); }

}  // namespace sparseserve
