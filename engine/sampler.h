// Turns one row of logits into a token: logit bias → repetition/presence/frequency penalties →
// temperature → min-p → top-k → top-p (over the tokens min-p and top-k keep, renormalised; vLLM V1's
// order) → draw from a seeded RNG (greedy when temperature is 0).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/sampling_params.h"

namespace sparseserve {

class Sampler {
 public:
  // params must be validated. prompt: the request's prompt ids (for the repetition penalty).
  Sampler(SamplingParams params, std::span<const int32_t> prompt);

  // Samples from logits (modified in place: penalties applied, NaN replaced by −∞) and records the
  // token as generated. A row whose largest logit is +∞, or whose logits are all −∞ or NaN, gets the
  // greedy token (the first index of the largest).
  int32_t sample(std::span<float> logits);
  // Records a token generated elsewhere (e.g. replayed after preemption).
  void accept(int32_t token);

  const SamplingParams& params() const { return params_; }

 private:
  void apply_penalties(std::span<float> logits) const;
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::unordered_map<int32_t, int32_t> output_counts_;  // generated token -> times generated
  std::vector<int32_t> seen_;                           // prompt ∪ generated (repetition penalty)
  std::vector<uint8_t> seen_mask_;
  std::vector<int32_t> order_;                          // scratch
};

}  // namespace sparseserve
