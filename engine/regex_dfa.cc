#include "engine/regex_dfa.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "common/errors.h"
#include "engine/regex_parse.h"
#include "engine/utf8.h"

namespace sparseserve {

namespace {

// A run of byte ranges: the UTF-8 encodings of a code point range, one range per byte.
struct ByteSeq {
  int n = 0;
  uint8_t lo[4] = {}, hi[4] = {};
};

// Appends the byte sequences that encode exactly the code points lo..hi (no surrogates inside).
void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<ByteSeq>& out) {
  for (uint32_t end : {0x7Fu, 0x7FFu, 0xFFFFu}) {  // one encoded length per sequence
    if (lo <= end && hi > end) {
      utf8_sequences(lo, end, out);
      utf8_sequences(end + 1, hi, out);
      return;
    }
  }
  // Split until, for each trailing byte, the ends share everything above it or span it whole.
  for (int i = 1; i < 4; ++i) {
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) == (hi & ~m)) continue;
    if ((lo & m) != 0) {
      utf8_sequences(lo, lo | m, out);
      utf8_sequences((lo | m) + 1, hi, out);
      return;
    }
    if ((hi & m) != m) {
      utf8_sequences(lo, (hi & ~m) - 1, out);
      utf8_sequences(hi & ~m, hi, out);
      return;
    }
  }
  std::string a, b;
  utf8::append(a, lo);
  utf8::append(b, hi);
  ByteSeq s;
  s.n = static_cast<int>(a.size());
  for (int k = 0; k < s.n; ++k) {
    s.lo[k] = static_cast<uint8_t>(a[static_cast<size_t>(k)]);
    s.hi[k] = static_cast<uint8_t>(b[static_cast<size_t>(k)]);
  }
  out.push_back(s);
}

[[noreturn]] void too_complex(const char* what) {
  throw InvalidArgument(std::string("the regex is too complex: it needs more than ") + what);
}

struct NfaState {
  int lo = 1, hi = 0;  // a byte edge [lo, hi] to `to` when lo ≤ hi
  int32_t to = -1;
  std::vector<int32_t> eps;
};

// Thompson construction, back to front: compile(node, next) returns the entry of a fragment that
// matches the node and then continues at state `next`.
class NfaBuilder {
 public:
  explicit NfaBuilder(const RegexTree& tree) : tree_(tree) {}
  std::vector<NfaState> states;

  int32_t add() {
    if (states.size() >= static_cast<size_t>(RegexDfa::kMaxNfaStates)) {
      too_complex((std::to_string(RegexDfa::kMaxNfaStates) + " NFA states").c_str());
    }
    states.emplace_back();
    return static_cast<int32_t>(states.size()) - 1;
  }
  int32_t add_fork(std::initializer_list<int32_t> to) {
    const int32_t s = add();
    states[static_cast<size_t>(s)].eps = to;
    return s;
  }

  int32_t compile(int32_t node, int32_t next) {
    // Each call is counted: a repeated body that adds no state ("(?:){10000}" nested) would otherwise
    // never meet the state limit and recurse without end.
    if (++calls_ > kMaxCalls) too_complex((std::to_string(kMaxCalls) + " steps to build its NFA").c_str());
    const RegexNode& n = tree_.nodes[static_cast<size_t>(node)];
    switch (n.kind) {
      case RegexNode::Kind::kEmpty: return next;
      case RegexNode::Kind::kSet: {
        std::vector<ByteSeq> seqs;
        for (const auto& [lo, hi] : n.set) utf8_sequences(lo, hi, seqs);
        // Sequences share their common tails (a continuation byte 80-BF on to the same state is one
        // state), so that a class of many lengths adds few states.
        std::map<std::tuple<int, int, int32_t>, int32_t> edges;
        const int32_t fork = add();  // with no sequence: a state without edges, matching nothing
        for (const ByteSeq& s : seqs) {
          int32_t cur = next;
          for (int k = s.n - 1; k >= 0; --k) {
            const auto [it, fresh] = edges.try_emplace({s.lo[k], s.hi[k], cur}, 0);
            if (fresh) {
              it->second = add();
              NfaState& e = states[static_cast<size_t>(it->second)];
              e.lo = s.lo[k];
              e.hi = s.hi[k];
              e.to = cur;
            }
            cur = it->second;
          }
          states[static_cast<size_t>(fork)].eps.push_back(cur);
        }
        return fork;
      }
      case RegexNode::Kind::kConcat: {
        int32_t cur = next;
        for (auto it = n.kids.rbegin(); it != n.kids.rend(); ++it) cur = compile(*it, cur);
        return cur;
      }
      case RegexNode::Kind::kAlt: {
        const int32_t fork = add();
        for (int32_t kid : n.kids) {
          const int32_t e = compile(kid, next);
          states[static_cast<size_t>(fork)].eps.push_back(e);
        }
        return fork;
      }
      case RegexNode::Kind::kRepeat: {
        const int32_t kid = n.kids[0];
        int32_t cur = next;
        if (n.max < 0) {  // a loop: the body returns to it
          cur = add();
          const int32_t body = compile(kid, cur);
          states[static_cast<size_t>(cur)].eps = {body, next};
        } else {  // max − min optional copies, each leading to the next or out
          for (int32_t i = n.min; i < n.max; ++i) {
            const int32_t body = compile(kid, cur);
            cur = add_fork({body, next});
          }
        }
        for (int32_t i = 0; i < n.min; ++i) cur = compile(kid, cur);
        return cur;
      }
    }
    return next;
  }

 private:
  static constexpr int64_t kMaxCalls = 10 * int64_t{RegexDfa::kMaxNfaStates};
  const RegexTree& tree_;
  int64_t calls_ = 0;
};

// Subset construction over byte classes, then the states that reach no match dropped.
class DfaBuilder {
 public:
  DfaBuilder(const std::vector<NfaState>& nfa, int32_t accept) : nfa_(nfa), accept_(accept), mark_(nfa.size(), 0) {}

  // Byte classes: bytes no edge tells apart share one.
  void classes(std::array<uint16_t, 256>& class_of, size_t& num_classes) const {
    std::array<bool, 257> boundary{};
    boundary[0] = true;
    for (const NfaState& s : nfa_) {
      if (s.lo > s.hi) continue;
      boundary[static_cast<size_t>(s.lo)] = true;
      boundary[static_cast<size_t>(s.hi) + 1] = true;
    }
    int c = -1;
    for (size_t b = 0; b < 256; ++b) {
      if (boundary[b]) ++c;
      class_of[b] = static_cast<uint16_t>(c);
    }
    num_classes = static_cast<size_t>(c) + 1;
  }

  // The states reachable through epsilon edges that hold a byte edge or accept, sorted.
  std::vector<int32_t> closure(const std::vector<int32_t>& from) {
    ++stamp_;
    std::vector<int32_t> stack(from), out;
    while (!stack.empty()) {
      const int32_t s = stack.back();
      stack.pop_back();
      if (mark_[static_cast<size_t>(s)] == stamp_) continue;
      mark_[static_cast<size_t>(s)] = stamp_;
      if (++work_ > RegexDfa::kMaxWork) too_complex((std::to_string(RegexDfa::kMaxWork) + " steps to compile").c_str());
      const NfaState& st = nfa_[static_cast<size_t>(s)];
      if (st.lo <= st.hi || s == accept_) out.push_back(s);
      for (int32_t e : st.eps) stack.push_back(e);
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  // sets[i]: DFA state i's NFA states; table: [state][class] → state or kDead.
  void build(int32_t start, const std::array<uint16_t, 256>& class_of, size_t num_classes) {
    const auto id_of = [&](std::vector<int32_t> set) {
      if (set.empty()) return RegexDfa::kDead;
      const auto [it, fresh] = ids_.emplace(std::move(set), static_cast<int32_t>(sets.size()));
      if (fresh) {
        if (sets.size() >= static_cast<size_t>(RegexDfa::kMaxStates)) {
          too_complex((std::to_string(RegexDfa::kMaxStates) + " automaton states").c_str());
        }
        sets.push_back(&it->first);
      }
      return it->second;
    };
    id_of(closure({start}));
    std::vector<std::vector<int32_t>> buckets(num_classes);
    for (size_t i = 0; i < sets.size(); ++i) {
      for (auto& b : buckets) b.clear();
      for (int32_t s : *sets[i]) {
        const NfaState& st = nfa_[static_cast<size_t>(s)];
        if (st.lo > st.hi) continue;
        for (size_t c = class_of[static_cast<size_t>(st.lo)]; c <= class_of[static_cast<size_t>(st.hi)]; ++c) {
          buckets[c].push_back(st.to);
        }
        work_ += static_cast<int64_t>(class_of[static_cast<size_t>(st.hi)] - class_of[static_cast<size_t>(st.lo)]) + 1;
      }
      for (size_t c = 0; c < num_classes; ++c) {
        table.push_back(buckets[c].empty() ? RegexDfa::kDead : id_of(closure(buckets[c])));
      }
    }
  }

  std::vector<const std::vector<int32_t>*> sets;  // keys of ids_ (std::map keys stay put)
  std::vector<int32_t> table;

 private:
  std::map<std::vector<int32_t>, int32_t> ids_;  // a DFA state's NFA states -> its number
  const std::vector<NfaState>& nfa_;
  int32_t accept_;
  std::vector<uint32_t> mark_;
  uint32_t stamp_ = 0;
  int64_t work_ = 0;
};

}  // namespace

RegexDfa RegexDfa::compile(std::string_view pattern, RegexMode mode) {
  const RegexTree tree = parse_regex(pattern, mode);
  NfaBuilder nfa(tree);
  const int32_t accept = nfa.add();
  const int32_t entry = nfa.compile(tree.root, accept);

  std::array<uint16_t, 256> class_of{};
  size_t num_classes = 0;
  DfaBuilder b(nfa.states, accept);
  b.classes(class_of, num_classes);
  b.build(entry, class_of, num_classes);
  std::vector<uint8_t> accepting;
  for (const auto* set : b.sets) accepting.push_back(std::binary_search(set->begin(), set->end(), accept) ? 1 : 0);
  return trimmed(class_of, num_classes, b.table, accepting);
}

RegexDfa RegexDfa::intersect(const RegexDfa& a, const RegexDfa& b) {
  // A byte's class is the pair of its classes in a and b.
  std::array<uint16_t, 256> class_of{};
  std::map<std::pair<uint16_t, uint16_t>, uint16_t> pair_class;
  std::vector<std::pair<uint16_t, uint16_t>> classes;
  for (size_t x = 0; x < 256; ++x) {
    const std::pair<uint16_t, uint16_t> k{a.class_of_[x], b.class_of_[x]};
    const auto [it, fresh] = pair_class.emplace(k, static_cast<uint16_t>(classes.size()));
    if (fresh) classes.push_back(k);
    class_of[x] = it->second;
  }
  const size_t C = classes.size();
  std::map<std::pair<int32_t, int32_t>, int32_t> ids;
  std::vector<std::pair<int32_t, int32_t>> states{{start(), start()}};
  ids[states[0]] = 0;
  std::vector<int32_t> table;
  std::vector<uint8_t> accepting;
  for (size_t i = 0; i < states.size(); ++i) {
    const auto [sa, sb] = states[i];
    accepting.push_back(a.accepting(sa) && b.accepting(sb) ? 1 : 0);
    for (size_t c = 0; c < C; ++c) {
      const int32_t ta = a.table_[static_cast<size_t>(sa) * a.num_classes_ + classes[c].first];
      const int32_t tb = b.table_[static_cast<size_t>(sb) * b.num_classes_ + classes[c].second];
      if (ta == kDead || tb == kDead) {
        table.push_back(kDead);
        continue;
      }
      const auto [it, fresh] = ids.emplace(std::pair{ta, tb}, static_cast<int32_t>(states.size()));
      if (fresh) {
        if (states.size() >= static_cast<size_t>(kMaxStates)) too_complex((std::to_string(kMaxStates) + " automaton states").c_str());
        states.emplace_back(ta, tb);
      }
      table.push_back(it->second);
    }
  }
  return trimmed(class_of, C, table, accepting);
}

RegexDfa RegexDfa::trimmed(const std::array<uint16_t, 256>& class_of, size_t num_classes,
                           const std::vector<int32_t>& raw_table, const std::vector<uint8_t>& raw_accepting) {
  const size_t n = raw_accepting.size(), C = num_classes;
  // Live: some path reaches an accepting state (backwards from them).
  std::vector<std::vector<int32_t>> into(n);
  for (size_t i = 0; i < n; ++i) {
    for (size_t c = 0; c < C; ++c) {
      if (const int32_t j = raw_table[i * C + c]; j != kDead) into[static_cast<size_t>(j)].push_back(static_cast<int32_t>(i));
    }
  }
  std::vector<uint8_t> live(raw_accepting);
  std::vector<int32_t> stack;
  for (size_t i = 0; i < n; ++i) {
    if (live[i]) stack.push_back(static_cast<int32_t>(i));
  }
  while (!stack.empty()) {
    const int32_t j = stack.back();
    stack.pop_back();
    for (int32_t i : into[static_cast<size_t>(j)]) {
      if (!live[static_cast<size_t>(i)]) {
        live[static_cast<size_t>(i)] = 1;
        stack.push_back(i);
      }
    }
  }
  if (n == 0 || !live[0]) throw InvalidArgument("the regex matches no text");  // n = 0: not even a start

  // Renumber the live states (the start stays 0); edges into dropped states become kDead.
  RegexDfa d;
  d.class_of_ = class_of;
  d.num_classes_ = C;
  std::vector<int32_t> renumber(n, kDead);
  int32_t kept = 0;
  for (size_t i = 0; i < n; ++i) {
    if (live[i]) renumber[i] = kept++;
  }
  d.table_.reserve(static_cast<size_t>(kept) * C);
  for (size_t i = 0; i < n; ++i) {
    if (!live[i]) continue;
    bool any = false;
    for (size_t c = 0; c < C; ++c) {
      const int32_t j = raw_table[i * C + c];
      const int32_t to = j == kDead ? kDead : renumber[static_cast<size_t>(j)];
      d.table_.push_back(to);
      any = any || to != kDead;
    }
    d.accepting_.push_back(raw_accepting[i]);
    d.extendable_.push_back(any ? 1 : 0);
  }
  return d;
}

int32_t RegexDfa::walk(int32_t state, std::string_view bytes) const {
  for (char ch : bytes) {
    state = next(state, static_cast<uint8_t>(ch));
    if (state == kDead) return kDead;
  }
  return state;
}

bool RegexDfa::matches(std::string_view text) const {
  const int32_t s = walk(start(), text);
  return s != kDead && accepting(s);
}

bool RegexText::push(std::string_view bytes) {
  const int32_t s = dfa_->walk(state_, bytes);
  if (s == RegexDfa::kDead) return false;
  state_ = s;
  return true;
}

}  // namespace sparseserve
