#include "engine/grammar.h"

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "common/errors.h"

namespace sparseserve {

// ---- UTF-8 -------------------------------------------------------------------------------------

namespace {

// The length a lead byte announces (0: not a lead byte), and the smallest code point of that length
// (shorter encodings are overlong).
int utf8_length(unsigned char b) {
  return b < 0x80 ? 1 : b >= 0xC2 && b <= 0xDF ? 2 : b >= 0xE0 && b <= 0xEF ? 3 : b >= 0xF0 && b <= 0xF4 ? 4 : 0;
}
uint32_t utf8_min(int n) { return n == 2 ? 0x80 : n == 3 ? 0x800 : n == 4 ? 0x10000 : 0; }

}  // namespace

bool utf8_range(std::string_view seq, uint32_t& lo, uint32_t& hi) {
  if (seq.empty()) return false;
  const auto lead = static_cast<unsigned char>(seq[0]);
  const int n = utf8_length(lead);
  if (n == 0 || seq.size() > static_cast<size_t>(n)) return false;
  uint32_t v = n == 1 ? lead : lead & (0xFFu >> (n + 1));
  for (size_t k = 1; k < seq.size(); ++k) {
    const auto b = static_cast<unsigned char>(seq[k]);
    if ((b & 0xC0) != 0x80) return false;
    v = (v << 6) | (b & 0x3Fu);
  }
  const int rest = 6 * (n - static_cast<int>(seq.size()));  // bits still to come (≤ 18)
  lo = std::max(v << rest, utf8_min(n));
  hi = std::min((v << rest) | ((1u << rest) - 1), 0x10FFFFu);
  if (lo >= 0xD800 && hi <= 0xDFFF) return false;        // only surrogates
  if (lo < 0xD800 && hi >= 0xD800 && hi <= 0xDFFF) hi = 0xD7FF;  // ED alone: D000..DFFF
  return lo <= hi;
}

bool decode_utf8(std::string_view text, std::vector<uint32_t>& cps, Utf8Tail& tail) {
  tail = Utf8Tail{};
  size_t i = 0;
  while (i < text.size()) {
    const int n = utf8_length(static_cast<unsigned char>(text[i]));
    const size_t have = std::min(text.size() - i, static_cast<size_t>(std::max(n, 1)));
    uint32_t lo = 0, hi = 0;
    if (!utf8_range(text.substr(i, have), lo, hi)) return false;
    if (have < static_cast<size_t>(n)) {
      tail = Utf8Tail{true, i, lo, hi};
      return true;
    }
    cps.push_back(lo);
    i += have;
  }
  return true;
}

// ---- Character sets ----------------------------------------------------------------------------

bool Grammar::Element::admits(uint32_t cp) const {
  const bool in = std::any_of(ranges.begin(), ranges.end(), [&](const auto& r) { return r.first <= cp && cp <= r.second; });
  return in != negated;
}

bool Grammar::Element::admits_any(uint32_t lo, uint32_t hi) const {
  if (!negated) {
    return std::any_of(ranges.begin(), ranges.end(), [&](const auto& r) { return r.first <= hi && lo <= r.second; });
  }
  uint32_t cur = lo;  // ranges are sorted and merged: look for a gap in [lo, hi]
  for (const auto& [a, b] : ranges) {
    if (b < cur) continue;
    if (a > cur) return true;
    if (b >= hi) return false;
    cur = b + 1;
  }
  return cur <= hi;
}

// ---- Parsing -----------------------------------------------------------------------------------

class GrammarParser {
 public:
  explicit GrammarParser(std::string_view src) : src_(src) {}

  Grammar run() {
    for (skip_space(true); pos_ < src_.size(); skip_space(true)) {
      const int32_t rule_line = line_;
      const std::string name = parse_name();
      const int32_t id = rule_id(name, rule_line);
      if (defined_[static_cast<size_t>(id)]) fail("rule '" + name + "' is defined twice");
      skip_space(false);
      if (src_.substr(pos_, 3) != "::=") fail("expected '::=' after the rule name '" + name + "'");
      pos_ += 3;
      skip_space(true);
      g_.rules_[static_cast<size_t>(id)] = parse_alternatives(false);
      defined_[static_cast<size_t>(id)] = true;
      skip_space(false);
      if (pos_ < src_.size() && src_[pos_] != '\n') fail(std::string("unexpected '") + src_[pos_] + "'");
    }
    for (const auto& [name, id] : ids_) {
      if (!defined_[static_cast<size_t>(id)]) {
        throw InvalidArgument("grammar line " + std::to_string(first_use_[static_cast<size_t>(id)]) +
                              ": rule '" + name + "' is used but not defined");
      }
    }
    const auto root = ids_.find("root");
    if (root == ids_.end()) throw InvalidArgument("grammar: no rule 'root'");
    g_.root_ = root->second;
    drop_unfinishable();
    check_left_recursion();
    return std::move(g_);
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw InvalidArgument("grammar line " + std::to_string(line_) + ": " + what);
  }

  static bool is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  }

  // Spaces, tabs, carriage returns and comments; line breaks too when `newlines`.
  void skip_space(bool newlines) {
    while (pos_ < src_.size()) {
      const char c = src_[pos_];
      if (c == ' ' || c == '\t' || c == '\r') {
        ++pos_;
      } else if (c == '#') {
        while (pos_ < src_.size() && src_[pos_] != '\n') ++pos_;
      } else if (c == '\n' && newlines) {
        ++pos_;
        ++line_;
      } else {
        break;
      }
    }
  }

  std::string parse_name() {
    const size_t start = pos_;
    while (pos_ < src_.size() && is_name_char(src_[pos_])) ++pos_;
    if (pos_ == start) fail(pos_ < src_.size() ? std::string("expected a rule name, got '") + src_[pos_] + "'"
                                               : std::string("expected a rule name"));
    return std::string(src_.substr(start, pos_ - start));
  }

  int32_t rule_id(const std::string& name, int32_t line) {
    const auto [it, fresh] = ids_.emplace(name, static_cast<int32_t>(g_.rules_.size()));
    if (fresh) add_rule(line);
    return it->second;
  }
  int32_t add_rule(int32_t line) {
    if (g_.rules_.size() >= Grammar::kMaxRules) fail("more than " + std::to_string(Grammar::kMaxRules) + " rules");
    g_.rules_.emplace_back();
    defined_.push_back(false);
    first_use_.push_back(line);
    return static_cast<int32_t>(g_.rules_.size() - 1);
  }
  // A generated rule (groups, repetitions) with these alternatives.
  int32_t generated(std::vector<Grammar::Sequence> alts) {
    const int32_t id = add_rule(line_);
    g_.rules_[static_cast<size_t>(id)] = std::move(alts);
    defined_[static_cast<size_t>(id)] = true;
    return id;
  }
  static Grammar::Element ref(int32_t rule) {
    Grammar::Element e;
    e.rule = rule;
    return e;
  }
  void count(size_t n) {
    elements_ += n;
    if (elements_ > Grammar::kMaxElements) {
      fail("the grammar is too large (more than " + std::to_string(Grammar::kMaxElements) +
           " elements once repetitions are written out)");
    }
  }

  std::vector<Grammar::Sequence> parse_alternatives(bool nested) {
    std::vector<Grammar::Sequence> alts;
    alts.push_back(parse_sequence(nested));
    while (true) {
      if (!nested) {  // a line that starts with '|' continues the rule
        const size_t at = pos_;
        const int32_t line = line_;
        skip_space(true);
        if (pos_ >= src_.size() || src_[pos_] != '|') {
          pos_ = at;
          line_ = line;
        }
      }
      if (pos_ >= src_.size() || src_[pos_] != '|') break;
      ++pos_;
      skip_space(true);
      alts.push_back(parse_sequence(nested));
    }
    return alts;
  }

  Grammar::Sequence parse_sequence(bool nested) {
    Grammar::Sequence seq;
    while (pos_ < src_.size()) {
      const char c = src_[pos_];
      const size_t start = seq.size();  // the element (or a literal's characters) a postfix applies to
      if (c == '"') {
        ++pos_;
        while (true) {
          if (pos_ >= src_.size() || src_[pos_] == '\n') fail("unterminated string literal");
          if (src_[pos_] == '"') break;
          Grammar::Element e;
          const uint32_t cp = parse_char();
          e.ranges.emplace_back(cp, cp);
          seq.push_back(std::move(e));
          count(1);
        }
        ++pos_;
      } else if (c == '[') {
        seq.push_back(parse_class());
        count(1);
      } else if (c == '.') {
        ++pos_;
        Grammar::Element any;
        any.negated = true;  // the complement of nothing
        seq.push_back(std::move(any));
        count(1);
      } else if (c == '(') {
        if (++depth_ > Grammar::kMaxNesting) fail("parentheses nested deeper than " + std::to_string(Grammar::kMaxNesting));
        ++pos_;
        skip_space(true);
        std::vector<Grammar::Sequence> alts = parse_alternatives(true);
        if (pos_ >= src_.size() || src_[pos_] != ')') fail("expected ')'");
        ++pos_;
        --depth_;
        seq.push_back(ref(generated(std::move(alts))));
        count(1);
      } else if (is_name_char(c)) {
        const int32_t use_line = line_;
        seq.push_back(ref(rule_id(parse_name(), use_line)));
        count(1);
      } else {
        break;
      }
      skip_space(nested);
      while (pos_ < src_.size() && (src_[pos_] == '*' || src_[pos_] == '+' || src_[pos_] == '?' || src_[pos_] == '{')) {
        apply_postfix(seq, start);
        skip_space(nested);
      }
    }
    return seq;
  }

  // Replaces seq[start..] (x) by its repetition under the postfix operator at pos_.
  void apply_postfix(Grammar::Sequence& seq, size_t start) {
    Grammar::Sequence x(seq.begin() + static_cast<std::ptrdiff_t>(start), seq.end());
    seq.resize(start);
    int32_t lo = 0, hi = -1;  // hi −1: unbounded
    const char op = src_[pos_++];
    if (op == '*') {
      lo = 0;
    } else if (op == '+') {
      lo = 1;
    } else if (op == '?') {
      hi = 1;
    } else {  // {m}, {m,}, {m,n}
      skip_space(false);
      lo = parse_count();
      skip_space(false);
      hi = lo;
      if (pos_ < src_.size() && src_[pos_] == ',') {
        ++pos_;
        skip_space(false);
        hi = pos_ < src_.size() && src_[pos_] == '}' ? -1 : parse_count();
        skip_space(false);
      }
      if (pos_ >= src_.size() || src_[pos_] != '}') fail("expected '}' after a repetition count");
      ++pos_;
      if (hi >= 0 && hi < lo) fail("repetition {m,n} with n < m");
    }
    count(x.size() * static_cast<size_t>(std::max(lo, hi) + 1));
    for (int32_t i = 0; i < lo; ++i) seq.insert(seq.end(), x.begin(), x.end());
    if (hi < 0) {  // x*: R ::= x R | ε
      const int32_t r = add_rule(line_);
      Grammar::Sequence again = x;
      again.push_back(ref(r));
      g_.rules_[static_cast<size_t>(r)] = {std::move(again), {}};
      defined_[static_cast<size_t>(r)] = true;
      seq.push_back(ref(r));
    } else if (hi > lo) {  // (hi − lo) optional copies, nested: Q ::= x Q' | ε, the last Q ::= x | ε
      int32_t inner = -1;
      for (int32_t i = 0; i < hi - lo; ++i) {
        Grammar::Sequence more = x;
        if (inner >= 0) more.push_back(ref(inner));
        inner = generated({std::move(more), {}});
      }
      seq.push_back(ref(inner));
    }
  }

  int32_t parse_count() {
    const size_t start = pos_;
    int64_t v = 0;
    while (pos_ < src_.size() && src_[pos_] >= '0' && src_[pos_] <= '9') {
      v = v * 10 + (src_[pos_++] - '0');
      if (v > Grammar::kMaxRepeat) fail("a repetition count over " + std::to_string(Grammar::kMaxRepeat));
    }
    if (pos_ == start) fail("expected a repetition count");
    return static_cast<int32_t>(v);
  }

  Grammar::Element parse_class() {
    ++pos_;  // '['
    Grammar::Element e;
    if (pos_ < src_.size() && src_[pos_] == '^') {
      e.negated = true;
      ++pos_;
    }
    while (true) {
      if (pos_ >= src_.size() || src_[pos_] == '\n') fail("unterminated character class");
      if (src_[pos_] == ']') break;
      const uint32_t a = parse_char();
      uint32_t b = a;
      if (pos_ + 1 < src_.size() && src_[pos_] == '-' && src_[pos_ + 1] != ']') {
        ++pos_;
        b = parse_char();
        if (b < a) fail("a character range whose end comes before its start");
      }
      e.ranges.emplace_back(a, b);
    }
    ++pos_;
    std::sort(e.ranges.begin(), e.ranges.end());
    std::vector<std::pair<uint32_t, uint32_t>> merged;
    for (const auto& r : e.ranges) {
      if (!merged.empty() && r.first <= merged.back().second + 1) {
        merged.back().second = std::max(merged.back().second, r.second);
      } else {
        merged.push_back(r);
      }
    }
    e.ranges = std::move(merged);
    return e;
  }

  // One character of a literal or class: an escape or one UTF-8 encoded code point.
  uint32_t parse_char() {
    const auto byte = static_cast<unsigned char>(src_[pos_]);
    if (byte == '\\') {
      if (pos_ + 1 >= src_.size()) fail("a '\\' at the end of the grammar");
      const char c = src_[pos_ + 1];
      pos_ += 2;
      switch (c) {
        case 'n': return '\n';
        case 'r': return '\r';
        case 't': return '\t';
        case '\\': case '"': case '[': case ']': case '-': case '^': return static_cast<uint32_t>(c);
        case 'x': return parse_hex(2);
        case 'u': return parse_hex(4);
        case 'U': return parse_hex(8);
        default: fail(std::string("unknown escape '\\") + c + "'");
      }
    }
    const int n = utf8_length(byte);
    uint32_t cp = 0, hi = 0;
    if (n == 0 || pos_ + static_cast<size_t>(n) > src_.size() || !utf8_range(src_.substr(pos_, static_cast<size_t>(n)), cp, hi)) {
      fail("invalid UTF-8 in the grammar");
    }
    pos_ += static_cast<size_t>(n);
    return cp;
  }

  uint32_t parse_hex(int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i, ++pos_) {
      const char c = pos_ < src_.size() ? src_[pos_] : '\0';
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) fail("expected " + std::to_string(digits) + " hexadecimal digits in an escape");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    if (v > 0x10FFFF) fail("an escape past U+10FFFF");
    return v;
  }

  // Drops the alternatives that no text completes: those holding a set without a valid code point
  // ([], a surrogate) or a reference to a rule none of whose alternatives finishes (a rule that
  // only recurses). Every position the matcher reaches can then be completed.
  void drop_unfinishable() {
    auto& rules = g_.rules_;
    const auto set_ok = [](const Grammar::Element& e) { return e.admits_any(0, 0xD7FF) || e.admits_any(0xE000, 0x10FFFF); };
    std::vector<bool> finishes(rules.size(), false);
    const auto sequence_ok = [&](const Grammar::Sequence& seq) {
      return std::all_of(seq.begin(), seq.end(), [&](const Grammar::Element& e) {
        return e.rule >= 0 ? finishes[static_cast<size_t>(e.rule)] : set_ok(e);
      });
    };
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t r = 0; r < rules.size(); ++r) {
        if (!finishes[r] && std::any_of(rules[r].begin(), rules[r].end(), sequence_ok)) finishes[r] = changed = true;
      }
    }
    if (!finishes[static_cast<size_t>(g_.root_)]) throw InvalidArgument("grammar: 'root' derives no text");
    for (auto& alts : rules) std::erase_if(alts, [&](const Grammar::Sequence& seq) { return !sequence_ok(seq); });
  }

  // A rule that may begin with itself (through rules that may match nothing) is refused: the
  // matcher's expansion of it would not end.
  void check_left_recursion() const {
    const auto& rules = g_.rules_;
    std::vector<bool> nullable(rules.size(), false);
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t r = 0; r < rules.size(); ++r) {
        if (nullable[r]) continue;
        for (const auto& seq : rules[r]) {
          if (std::all_of(seq.begin(), seq.end(), [&](const Grammar::Element& e) {
                return e.rule >= 0 && nullable[static_cast<size_t>(e.rule)];
              })) {
            nullable[r] = changed = true;
            break;
          }
        }
      }
    }
    std::vector<std::vector<int32_t>> left(rules.size());  // rules each may begin with
    for (size_t r = 0; r < rules.size(); ++r) {
      for (const auto& seq : rules[r]) {
        for (const Grammar::Element& e : seq) {
          if (e.rule < 0) break;
          left[r].push_back(e.rule);
          if (!nullable[static_cast<size_t>(e.rule)]) break;
        }
      }
    }
    std::vector<int8_t> mark(rules.size(), 0);  // 0 new, 1 on the path, 2 done
    std::function<void(int32_t)> visit = [&](int32_t r) {
      mark[static_cast<size_t>(r)] = 1;
      for (const int32_t next : left[static_cast<size_t>(r)]) {
        if (mark[static_cast<size_t>(next)] == 1) {
          std::string name = "(a group)";
          for (const auto& [n, id] : ids_) {
            if (id == next) name = "'" + n + "'";
          }
          throw InvalidArgument("grammar: rule " + name + " is left-recursive (it may begin with itself)");
        }
        if (mark[static_cast<size_t>(next)] == 0) visit(next);
      }
      mark[static_cast<size_t>(r)] = 2;
    };
    for (size_t r = 0; r < rules.size(); ++r) {
      if (mark[r] == 0) visit(static_cast<int32_t>(r));
    }
  }

  std::string_view src_;
  size_t pos_ = 0;
  int32_t line_ = 1;
  Grammar g_;
  std::map<std::string, int32_t> ids_;
  std::vector<bool> defined_;
  std::vector<int32_t> first_use_;
  size_t elements_ = 0;
  int32_t depth_ = 0;  // parentheses open
};

Grammar Grammar::parse(std::string_view text) { return GrammarParser(text).run(); }

// ---- Matching ----------------------------------------------------------------------------------

namespace {

using Pos = GrammarText::Pos;
using Stack = GrammarText::Stack;

const Grammar::Element& element(const Grammar& g, const Pos& p) {
  return g.alternatives(p.rule)[static_cast<size_t>(p.alt)][static_cast<size_t>(p.index)];
}

bool last_in_sequence(const Grammar& g, const Pos& p) {
  return static_cast<size_t>(p.index) + 1 == g.alternatives(p.rule)[static_cast<size_t>(p.alt)].size();
}

// The stack past its top element (the next element of the same sequence, or the caller's).
void step_past_top(const Grammar& g, Stack& s) {
  const Pos p = s.back();
  s.pop_back();
  if (!last_in_sequence(g, p)) s.push_back({p.rule, p.alt, p.index + 1});
}

// Expands rule references at the top of `s` until each stack's top is a character set (or it is
// empty), adding those to `out`. Each intermediate stack is expanded once (`seen`): alternatives
// that reach the same stack by different paths (nullable rules) do not multiply the work.
void expand(const Grammar& g, Stack s, std::set<Stack>& seen, std::vector<Stack>& out) {
  std::vector<Stack> todo{std::move(s)};
  while (!todo.empty()) {
    Stack cur = std::move(todo.back());
    todo.pop_back();
    if (!seen.insert(cur).second) continue;
    if (seen.size() > Grammar::kMaxExpansion) {
      throw InvalidArgument("grammar: more than " + std::to_string(Grammar::kMaxExpansion) +
                            " stacks expanded at one position (the grammar is too ambiguous)");
    }
    if (cur.empty() || element(g, cur.back()).rule < 0) {
      out.push_back(std::move(cur));
      continue;
    }
    const int32_t rule = element(g, cur.back()).rule;
    step_past_top(g, cur);
    const auto& alts = g.alternatives(rule);
    for (size_t a = 0; a < alts.size(); ++a) {
      Stack next = cur;
      if (!alts[a].empty()) next.push_back({rule, static_cast<int32_t>(a), 0});
      todo.push_back(std::move(next));
    }
  }
}

void normalize(std::vector<Stack>& stacks) {
  std::sort(stacks.begin(), stacks.end());
  stacks.erase(std::unique(stacks.begin(), stacks.end()), stacks.end());
  if (stacks.size() > Grammar::kMaxStacks) {
    throw InvalidArgument("grammar: the text so far has more than " + std::to_string(Grammar::kMaxStacks) +
                          " parses (the grammar is too ambiguous)");
  }
}

std::vector<Stack> initial(const Grammar& g) {
  std::vector<Stack> out;
  std::set<Stack> seen;
  const auto& alts = g.alternatives(g.root());
  for (size_t a = 0; a < alts.size(); ++a) {
    Stack s;
    if (!alts[a].empty()) s.push_back({g.root(), static_cast<int32_t>(a), 0});
    expand(g, std::move(s), seen, out);
  }
  normalize(out);
  return out;
}

// The stacks after code point cp (empty: no stack admits it).
std::vector<Stack> advance(const Grammar& g, const std::vector<Stack>& stacks, uint32_t cp) {
  std::vector<Stack> out;
  std::set<Stack> seen;
  for (const Stack& s : stacks) {
    if (s.empty() || !element(g, s.back()).admits(cp)) continue;
    Stack next = s;
    step_past_top(g, next);
    expand(g, std::move(next), seen, out);
  }
  normalize(out);
  return out;
}

// Advances `stacks` through every code point; false (stacks left as they were mid-way) when one is
// admitted by no stack.
bool advance_all(const Grammar& g, std::vector<Stack>& stacks, const std::vector<uint32_t>& cps) {
  for (const uint32_t cp : cps) {
    std::vector<Stack> next = advance(g, stacks, cp);
    if (next.empty()) return false;
    stacks = std::move(next);
  }
  return true;
}

bool any_admits(const Grammar& g, const std::vector<Stack>& stacks, uint32_t lo, uint32_t hi) {
  return std::any_of(stacks.begin(), stacks.end(),
                     [&](const Stack& s) { return !s.empty() && element(g, s.back()).admits_any(lo, hi); });
}

}  // namespace

bool Grammar::matches(std::string_view text) const {
  std::vector<uint32_t> cps;
  Utf8Tail tail;
  if (!decode_utf8(text, cps, tail) || tail.partial) return false;
  std::vector<Stack> stacks = initial(*this);
  if (!advance_all(*this, stacks, cps)) return false;
  return std::any_of(stacks.begin(), stacks.end(), [](const Stack& s) { return s.empty(); });
}

// ---- GrammarText -------------------------------------------------------------------------------

GrammarText::GrammarText(std::shared_ptr<const Grammar> grammar)
    : grammar_(std::move(grammar)), stacks_(initial(*grammar_)) {
  rebuild_nodes();
}

void GrammarText::rebuild_nodes() {
  nodes_.clear();
  tops_.clear();
  for (const Stack& s : stacks_) {
    int32_t parent = -1;
    for (const Pos& p : s) {
      nodes_.push_back({p, parent});
      parent = static_cast<int32_t>(nodes_.size() - 1);
    }
    tops_.push_back(parent);
  }
  base_ = nodes_.size();
}

int32_t GrammarText::push_node(Pos pos, int32_t parent) const {
  nodes_.push_back({pos, parent});
  return static_cast<int32_t>(nodes_.size() - 1);
}

int GrammarText::consume(int32_t node, size_t i) const {
  if (++steps_ > kMaxSearchSteps) return -1;
  if (i == cps_.size()) {
    if (!tail_.partial) return 1;
    return node >= 0 && element(*grammar_, nodes_[static_cast<size_t>(node)].pos).admits_any(tail_.lo, tail_.hi) ? 1 : 0;
  }
  if (node < 0) return 0;  // the text is whole; more follows
  const Pos p = nodes_[static_cast<size_t>(node)].pos;
  const int32_t parent = nodes_[static_cast<size_t>(node)].parent;
  if (!element(*grammar_, p).admits(cps_[i])) return 0;
  return expand_consume(last_in_sequence(*grammar_, p) ? parent : push_node({p.rule, p.alt, p.index + 1}, parent),
                        i + 1);
}

int GrammarText::expand_consume(int32_t node, size_t i) const {
  if (node < 0) return consume(node, i);
  if (++steps_ > kMaxSearchSteps) return -1;
  const Pos p = nodes_[static_cast<size_t>(node)].pos;
  const int32_t parent = nodes_[static_cast<size_t>(node)].parent;
  const int32_t rule = element(*grammar_, p).rule;
  if (rule < 0) return consume(node, i);
  const int32_t below = last_in_sequence(*grammar_, p) ? parent : push_node({p.rule, p.alt, p.index + 1}, parent);
  const auto& alts = grammar_->alternatives(rule);
  for (size_t a = 0; a < alts.size(); ++a) {
    const int32_t top = alts[a].empty() ? below : push_node({rule, static_cast<int32_t>(a), 0}, below);
    if (const int r = expand_consume(top, i); r != 0) return r;
  }
  return 0;
}

int GrammarText::search(std::string_view bytes) const {
  cps_.clear();
  std::string joined;  // only when an unfinished sequence waits: most calls allocate nothing
  if (!partial_.empty()) joined = partial_ + std::string(bytes);
  if (!decode_utf8(partial_.empty() ? bytes : std::string_view(joined), cps_, tail_)) return 0;
  steps_ = 0;
  int result = 0;
  for (const int32_t top : tops_) {
    result = consume(top, 0);
    nodes_.resize(base_);
    if (result != 0) break;
  }
  return result;
}

bool GrammarText::run(std::string_view bytes, std::vector<Stack>& stacks, std::string& partial) const {
  const Grammar& g = *grammar_;
  const std::string buf = partial + std::string(bytes);
  std::vector<uint32_t> cps;
  Utf8Tail tail;
  if (!decode_utf8(buf, cps, tail) || !advance_all(g, stacks, cps)) return false;
  if (tail.partial && !any_admits(g, stacks, tail.lo, tail.hi)) return false;
  partial = tail.partial ? buf.substr(tail.at) : std::string();
  return true;
}

bool GrammarText::accepts(std::string_view bytes) const {
  if (bytes.empty()) return true;
  if (mask_steps_ > kMaxMaskSteps) {
    throw InvalidArgument("grammar: masking one token took more than " + std::to_string(kMaxMaskSteps) +
                          " search steps; the grammar is too ambiguous to follow (e.g. alternatives that "
                          "match the same text, or nested repetitions of rules that may be empty)");
  }
  try {
    return try_accepts(bytes);
  } catch (const InvalidArgument&) {  // past kMaxStacks or kMaxExpansion: not taken
    return false;
  }
}

bool GrammarText::try_accepts(std::string_view bytes) const {
  // Most ids fail on their first byte: try that against the stacks' tops before anything else.
  if (partial_.empty()) {
    uint32_t lo = 0, hi = 0;
    if (!utf8_range(bytes.substr(0, 1), lo, hi) || !any_admits(*grammar_, stacks_, lo, hi)) return false;
  }
  const int found = search(bytes);
  mask_steps_ += found >= 0 ? steps_ : 2 * kMaxSearchSteps;
  if (found >= 0) return found == 1;
  std::vector<Stack> stacks = stacks_;  // past the search's budget: the deduplicated sets decide
  std::string partial = partial_;
  return run(bytes, stacks, partial);
}

bool GrammarText::push(std::string_view bytes) {
  std::vector<Stack> stacks = stacks_;
  std::string partial = partial_;
  try {
    if (!run(bytes, stacks, partial)) return false;
  } catch (const InvalidArgument&) {  // past kMaxStacks or kMaxExpansion (accepts() refused these bytes too)
    return false;
  }
  stacks_ = std::move(stacks);
  partial_ = std::move(partial);
  rebuild_nodes();
  mask_steps_ = 0;
  return true;
}

bool GrammarText::complete() const {
  return partial_.empty() && std::any_of(stacks_.begin(), stacks_.end(), [](const Stack& s) { return s.empty(); });
}

std::string GrammarText::state_key() const {
  // The unfinished UTF-8 bytes, then each stack (sorted, distinct): its length and positions.
  std::string key(1, static_cast<char>(partial_.size()));
  key += partial_;
  const auto put = [&](int32_t v) { key.append(reinterpret_cast<const char*>(&v), sizeof v); };
  for (const Stack& st : stacks_) {
    put(static_cast<int32_t>(st.size()));
    for (const Pos& p : st) put(p.rule), put(p.alt), put(p.index);
  }
  return key;
}

bool GrammarText::extendable() const {
  return !partial_.empty() || std::any_of(stacks_.begin(), stacks_.end(), [](const Stack& s) { return !s.empty(); });
}

}  // namespace sparseserve
