#include "engine/json_constraint.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "common/errors.h"
#include "engine/text_constraint.h"

namespace sparseserve {

namespace {

bool whitespace_only(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; });
}

}  // namespace

void constrain_json(const JsonText& text, const VocabularyBytes& vocab, std::span<const int32_t> stop_ids, bool may_stop,
                    std::span<float> logits) {
  check(static_cast<int64_t>(logits.size()) == vocab.size(), "constrain_json: logits and vocabulary sizes differ");
  const bool complete = text.complete();
  const StopsNow stops(complete, may_stop, stop_ids, logits);
  const bool stops_now = stops.allowed();
  // Whether the text takes each first byte, found once per byte: most ids fail there.
  std::array<int8_t, 256> first{};  // 0: not tried yet, 1: taken, -1: refused
  const bool plain_string = text.in_plain_string();
  for (int32_t id = 0; id < vocab.size(); ++id) {
    float& l = logits[static_cast<size_t>(id)];
    if (l == -INFINITY) continue;
    const std::string_view bytes = vocab.text(id);
    bool ok = false;
    if (plain_string && vocab.plain(id)) continue;  // stays inside the string
    if (!bytes.empty() && !(stops_now && text.done())) {
      int8_t& f = first[static_cast<uint8_t>(bytes[0])];
      if (f == 0) f = text.accepts(bytes.substr(0, 1)) ? 1 : -1;
      if (f > 0) ok = text.accepts(bytes);
      if (!ok && complete && !stops_now) ok = whitespace_only(bytes);
    }
    if (!ok) l = -INFINITY;
  }
  stops.restore(logits);
}

bool advance_json(JsonText& text, std::string_view bytes) {
  if (bytes.empty()) return false;
  return text.push(bytes) || (text.complete() && whitespace_only(bytes));
}

}  // namespace sparseserve
