#include "engine/json_text.h"

#include <algorithm>

namespace sparseserve {

namespace {

// Appends to `out` (up to JsonText::kMaxStates) every state `s` becomes after `bytes`, forking
// where a byte begins a value of several alternatives.
void walk(JsonPrefix s, std::string_view bytes, std::vector<JsonPrefix>& out) {
  // Most texts never fork: one pass along the first alternatives says so.
  s.clear_forked();
  JsonPrefix t = s;
  const bool taken = t.push(bytes);
  if (!t.forked()) {
    if (taken) out.push_back(t);
    return;
  }
  for (size_t i = 0; i < bytes.size(); ++i) {
    const auto b = static_cast<uint8_t>(bytes[i]);
    JsonPrefix next = s;
    const bool ok = next.push(b);  // the first alternative (forks() is set even when it fails)
    for (int32_t k = 1; k < next.forks(); ++k) {
      JsonPrefix other = s;
      other.pick(k);
      if (other.push(b)) walk(other, bytes.substr(i + 1), out);
      if (out.size() >= JsonText::kMaxStates) return;
    }
    if (!ok) return;
    s = next;
  }
  if (out.size() < JsonText::kMaxStates) out.push_back(s);
}

// Whether some path of `s` takes all of `bytes` (walk's question without the states: no allocation,
// as the mask asks it of every vocabulary id).
bool reaches(const JsonPrefix& from, std::string_view bytes) {
  JsonPrefix t = from;
  t.clear_forked();
  const bool taken = t.push(bytes);
  if (!t.forked()) return taken;
  JsonPrefix s = from;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const auto b = static_cast<uint8_t>(bytes[i]);
    JsonPrefix next = s;
    const bool ok = next.push(b);
    for (int32_t k = 1; k < next.forks(); ++k) {
      JsonPrefix other = s;
      other.pick(k);
      if (other.push(b) && reaches(other, bytes.substr(i + 1))) return true;
    }
    if (!ok) return false;
    s = next;
  }
  return true;
}

}  // namespace

bool JsonText::accepts(std::string_view bytes) const {
  return std::any_of(states_.begin(), states_.end(), [&](const JsonPrefix& s) { return reaches(s, bytes); });
}

bool JsonText::push(std::string_view bytes) {
  std::vector<JsonPrefix> next;
  for (const JsonPrefix& s : states_) {
    if (next.size() >= kMaxStates) break;
    walk(s, bytes, next);
  }
  if (next.empty()) return false;
  states_ = std::move(next);
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
