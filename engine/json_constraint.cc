#include "engine/json_constraint.h"

#include <algorithm>
#include <cmath>

#include "common/errors.h"

namespace sparseserve {

namespace {

bool whitespace_only(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; });
}

}  // namespace

JsonVocabulary::JsonVocabulary(const Tokenizer& tok, int32_t vocab_size) {
  offsets_.reserve(static_cast<size_t>(vocab_size) + 1);
  offsets_.push_back(0);
  for (int32_t id = 0; id < vocab_size; ++id) {
    if (!tok.is_special(id)) bytes_ += tok.decode(std::span<const int32_t>(&id, 1), /*skip_special=*/false);
    offsets_.push_back(static_cast<uint32_t>(bytes_.size()));
  }
}

void constrain_json(const JsonPrefix& text, const JsonVocabulary& vocab, std::span<const int32_t> stops, bool may_stop,
                    std::span<float> logits) {
  check(static_cast<int64_t>(logits.size()) == vocab.size(), "constrain_json: logits and vocabulary sizes differ");
  const bool complete = text.complete();
  // Stops allowed now keep their logits, whatever their bytes (one may also be a text token).
  std::vector<std::pair<int32_t, float>> kept_stops;
  if (complete && may_stop) {
    for (int32_t id : stops) kept_stops.emplace_back(id, logits[static_cast<size_t>(id)]);
  }
  for (int32_t id = 0; id < vocab.size(); ++id) {
    float& l = logits[static_cast<size_t>(id)];
    if (l == -INFINITY) continue;
    const std::string_view bytes = vocab.text(id);
    bool ok = false;
    if (!bytes.empty()) {
      JsonPrefix next = text;
      ok = next.push(bytes) || (complete && !may_stop && whitespace_only(bytes));
    }
    if (!ok) l = -INFINITY;
  }
  for (const auto& [id, l] : kept_stops) logits[static_cast<size_t>(id)] = l;
}

bool advance_json(JsonPrefix& text, std::string_view bytes) {
  if (bytes.empty()) return false;
  JsonPrefix next = text;
  if (next.push(bytes)) {
    text = next;
    return true;
  }
  return text.complete() && whitespace_only(bytes);
}

}  // namespace sparseserve
