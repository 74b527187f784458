// Head calibration (`sparseserve calibrate`): scores every (layer, KV head) forward-only on synthetic
// multi-passkey prompts, the answer teacher-forced after the prompt, and returns DuoAttention-style
// gates (higher = more retrieval-like). The answer rows are the last prompt token and every answer
// token but the last (the rows that predict the answer). Two scores; kAblation is the default: on
// SmolLM2-135M its 50% head split kept passkey accuracy at 100% / 80% (2K / 4K, 10 trials, dense
// 70% / 90%) where kOutputChange's kept 50% / 30%.
//
// kOutputChange (local): one dense forward pass per prompt. At the answer rows, each head's
//   attention output is computed twice — dense, and restricted to its streaming Λ band (sink +
//   local) — and the score is the mean relative change ‖o_band − o_dense‖ / ‖o_dense‖ over those
//   rows and the query heads of its group. Gate = score / max score.
// kAblation (end to end): the score is the increase of the answer's negative log-likelihood
//   (Σ −log p(answer token) over the answer rows, nats) when that (layer, KV head) alone — every
//   query head of its group, at every row — attends under the Λ band and everything else is dense,
//   averaged over prompts (engine/head_ablation.h). Gate = clamp(score / max score, 0, 1). Cost
//   per prompt: one dense pass plus, per (layer, KV head), a pass resumed at that layer from the
//   dense residual stream entering it and over the rows ≥ sink + local only (earlier rows see
//   every key under the band and are the same in every run): about 1 + n_kv_heads × n_layers / 2
//   forward passes.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model.h"
#include "kvcache/geometry.h"
#include "kvcache/head_pattern.h"

namespace sparseserve {

enum class CalibrationMethod { kOutputChange, kAblation };

// "output-change" / "ablation"
std::string_view calibration_method_name(CalibrationMethod m);

struct CalibrationOptions {
  CalibrationMethod method = CalibrationMethod::kAblation;
  int32_t prompts = 8;               // synthetic prompts
  int64_t context_tokens = 1536;     // tokens per prompt (≥ 256); the shipped SmolLM2 pattern used 1536
  int32_t needles = 3;               // passkeys per prompt (the first is asked for)
  kvcache::StreamingWindow window{64, 256};
  uint64_t seed = 1;
  std::string haystack;  // text the prompts are cut from; empty: default_haystack()
};

// The message for a streaming window that is not shorter than the prompts.
std::string streaming_window_too_long(const CalibrationOptions& opts);

struct CalibrationProgress {
  int32_t prompt = 0;       // prompt being scored, 1-based
  int32_t prompts = 0;
  int32_t layers_done = 0;  // layers of this prompt whose heads are scored; n_layers = prompt done
  int32_t n_layers = 0;
  double fraction = 0;      // share of the whole calibration's work done, in (0, 1]
};

// A calibration prompt with its answer teacher-forced: ids = prompt + answer tokens; rows
// first_row .. last_row (the last prompt token .. the second-to-last answer token) predict
// ids[first_row + 1 .. last_row + 1].
struct CalibrationPrompt {
  std::vector<int32_t> ids;
  int64_t first_row = 0, last_row = 0;
};

// The opts.prompts synthetic prompts (deterministic in opts.seed and the haystack: the default one
// depends on the host, see passkey.h).
std::vector<CalibrationPrompt> calibration_prompts(const Model& model, const CalibrationOptions& opts);

// Raw score of opts.method per (layer, KV head), row-major [n_layers][n_kv_heads], averaged over
// the prompts (kAblation: nats, may be negative). progress is called after each prompt and, for
// kAblation, after each layer of a prompt. InvalidArgument for options out of range (no prompt or
// needle, a context under 256 tokens or over the model's, a window with local < 1 or sink < 0, or
// one of sink + local ≥ the context: streaming_window_too_long).
std::vector<double> score_heads(const Model& model, const CalibrationOptions& opts,
                                const std::function<void(const CalibrationProgress&)>& progress = {});

// Gates from raw scores ([n_layers][n_kv_heads], as score_heads returns them): clamp(score / max
// score, 0, 1). InvalidArgument when the count does not match the shape; Error when a score is not
// finite or none is positive (nothing to rank the heads by).
kvcache::HeadGates gates_from_scores(const std::vector<double>& score, int32_t n_layers, int32_t n_kv_heads);

// gates_from_scores(score_heads(model, opts, progress), the model's layers and KV heads).
kvcache::HeadGates calibrate_heads(const Model& model, const CalibrationOptions& opts,
                                   const std::function<void(const CalibrationProgress&)>& progress = {});

}  // namespace sparseserve
