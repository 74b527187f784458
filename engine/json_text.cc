#include "engine/json_text.h"

#include <algorithm>

namespace sparseserve {

namespace {

// Adds `s` unless an equal state is there already, or `out` is full (the later parses are dropped).
void add(std::vector<JsonPrefix>& out, const JsonPrefix& s) {
  if (out.size() >= JsonText::kMaxStates) return;
  for (const JsonPrefix& o : out) {
    if (o.same_state(s)) return;
  }
  out.push_back(s);
}

// Every state of `from` after byte b, each alternative a value may begin with in declared order,
// equal states once.
void step(const std::vector<JsonPrefix>& from, uint8_t b, std::vector<JsonPrefix>& to) {
  to.clear();
  for (const JsonPrefix& s : from) {
    if (to.size() >= JsonText::kMaxStates) return;  // full: the later parses are dropped anyway
    JsonPrefix t = s;
    const bool ok = t.push(b);  // the first alternative (forks() is set even when it fails)
    const int32_t ways = t.forks();
    if (ok) add(to, t);
    for (int32_t k = 1; k < ways; ++k) {
      JsonPrefix u = s;
      u.pick(k);
      if (u.push(b)) add(to, u);
    }
  }
}

// The states `from` becomes after `bytes`, byte by byte (a breadth-first walk: the work is bounded
// by the states kept, however often values fork). `tmp` is scratch.
void walk(std::vector<JsonPrefix>& states, std::string_view bytes, std::vector<JsonPrefix>& tmp) {
  for (char c : bytes) {
    step(states, static_cast<uint8_t>(c), tmp);
    states.swap(tmp);
    if (states.empty()) return;
  }
}

}  // namespace

bool JsonText::accepts(std::string_view bytes) const {
  // Most texts never fork: one pass along the first alternatives decides, when no copy forked
  // (then push keeps every copy that takes the bytes). Otherwise the walk push takes, cap included,
  // so accepts and push never disagree.
  bool forked = false, taken = false;
  for (const JsonPrefix& s : states_) {
    JsonPrefix t = s;
    t.clear_forked();
    taken = t.push(bytes) || taken;
    forked = forked || t.forked();
    if (forked) break;
  }
  if (!forked) return taken;
  scratch_ = states_;
  walk(scratch_, bytes, scratch2_);
  return !scratch_.empty();
}

bool JsonText::push(std::string_view bytes) {
  if (states_.size() == 1) {
    JsonPrefix t = states_.front();
    t.clear_forked();
    const bool taken = t.push(bytes);
    if (!t.forked()) {
      if (taken) states_.front() = t;
      return taken;
    }
  }
  scratch_ = states_;
  walk(scratch_, bytes, scratch2_);
  if (scratch_.empty()) return false;
  states_.swap(scratch_);
  return true;
}

bool JsonText::complete() const {
  return std::any_of(states_.begin(), states_.end(), [](const JsonPrefix& s) { return s.complete(); });
}

bool JsonText::done() const {
  return std::all_of(states_.begin(), states_.end(), [](const JsonPrefix& s) { return s.done(); });
}

bool JsonText::in_plain_string() const {
  return std::all_of(states_.begin(), states_.end(), [](const JsonPrefix& s) { return s.in_plain_string(); });
}

}  // namespace sparseserve
