// What every forward pass (CpuForward, the GPU's CudaForward) checks and counts in a step's batch.
#pragma once

#include <cstdint>
#include <span>

#include "engine/kv_backend.h"
#include "engine/model_config.h"

namespace sparseserve {

struct StepRows {
  int64_t rows = 0;        // tokens in the batch
  int64_t logit_rows = 0;  // rows that need logits
};

// Checks the batch against the model before anything is written: every token id in the vocabulary,
// every context within max_context (InvalidArgument naming the value otherwise).
StepRows check_step(const ModelConfig& config, std::span<const ForwardSeq> batch);

// The first of a sequence's rows in the step that needs logits (every row, the last, or none:
// tokens.size()).
inline int64_t first_logit_row(const ForwardSeq& s) {
  const auto n = static_cast<int64_t>(s.tokens.size());
  return s.no_logits ? n : s.all_logits ? 0 : n > 0 ? n - 1 : 0;
}

}  // namespace sparseserve
