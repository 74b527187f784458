#include "engine/text_constraint.h"

#include <algorithm>
#include <cmath>

#include "common/errors.h"

namespace sparseserve {

StopsNow::StopsNow(bool complete, bool may_stop, std::span<const int32_t> stops, std::span<const float> logits) {
  allowed_ = complete && may_stop &&
             std::any_of(stops.begin(), stops.end(), [&](int32_t id) { return logits[static_cast<size_t>(id)] != -INFINITY; });
  if (!allowed_) return;
  for (int32_t id : stops) kept_.emplace_back(id, logits[static_cast<size_t>(id)]);
}

void StopsNow::restore(std::span<float> logits) const {
  for (const auto& [id, l] : kept_) logits[static_cast<size_t>(id)] = l;
}

void constrain_text(const TextLanguage& text, const VocabularyBytes& vocab, std::span<const int32_t> stops,
                    bool may_stop, std::span<float> logits) {
  check(static_cast<int64_t>(logits.size()) == vocab.size(), "constrain_text: logits and vocabulary sizes differ");
  const StopsNow stops_now(text.complete(), may_stop, stops, logits);
  if (!stops_now.allowed() && !text.extendable()) return;  // a whole text held open: nothing to steer
  for (int32_t id = 0; id < vocab.size(); ++id) {
    float& l = logits[static_cast<size_t>(id)];
    if (l == -INFINITY) continue;
    const std::string_view bytes = vocab.text(id);
    if (bytes.empty() || !text.accepts(bytes)) l = -INFINITY;
  }
  stops_now.restore(logits);
}

}  // namespace sparseserve
