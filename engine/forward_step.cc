#include "engine/forward_step.h"

#include <string>

#include "common/errors.h"

namespace sparseserve {

StepRows check_step(const ModelConfig& c, std::span<const ForwardSeq> batch) {
  StepRows r;
  for (const ForwardSeq& s : batch) {
    const auto n = static_cast<int64_t>(s.tokens.size());
    if (s.start + n > c.max_context) {
      throw InvalidArgument("context of " + std::to_string(s.start + n) + " tokens exceeds the model's " +
                            std::to_string(c.max_context));
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= c.vocab_size) throw InvalidArgument("token id " + std::to_string(t) + " outside the vocabulary");
    }
    r.rows += n;
    r.logit_rows += n - first_logit_row(s);
  }
  return r;
}

}  // namespace sparseserve
