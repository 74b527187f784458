// Head calibration (`sparseserve calibrate`): scores every (layer, KV head) forward-only on synthetic
// multi-passkey prompts and returns DuoAttention-style gates (higher = more retrieval-like).
//
// How: one dense forward pass per prompt, with the answer teacher-forced at the end. At the query
// positions that produce the answer, each head's attention output is computed twice — dense, and
// restricted to its streaming Λ band (sink + local) — and the head's score is the mean relative
// change ‖o_band − o_dense‖ / ‖o_dense‖ over those positions and the query heads of its group.
// A head whose output does not change when it streams can stream.
#pragma once

#include <cstdint>
#include <functional>

#include "engine/model.h"
#include "kvcache/geometry.h"
#include "kvcache/head_pattern.h"

namespace sparseserve {

struct CalibrationOptions {
  int32_t prompts = 8;               // synthetic prompts
  int64_t context_tokens = 2048;     // tokens per prompt
  int32_t needles = 3;               // passkeys per prompt (the first is asked for)
  kvcache::StreamingWindow window{64, 256};
  uint64_t seed = 1;
};

// progress(done, total) is called after each prompt.
kvcache::HeadGates calibrate_heads(const Model& model, const CalibrationOptions& opts,
                                   const std::function<void(int, int)>& progress = {});

}  // namespace sparseserve
