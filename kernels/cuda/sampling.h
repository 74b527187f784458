// Token sampling over a batch of fp32 logits rows (CUDA); twin: engine/sampler.h Sampler::sample
// (temperature → min-p → top-k → top-p → draw; greedy when temperature is 0 or top_k is 1).
// Penalties and logit bias are not applied here: apply them to the logits first (host or another
// kernel). Layout: logits row r at logits + r * ld (ld ≥ vocab), tokens[r] receives row r's token.
//
// Semantics, per row (the CPU twin's, in distribution):
//   - a NaN logit counts as −∞; a row whose largest logit is not finite (+∞, or all −∞) takes the
//     greedy token whatever its parameters, so every token is in [0, vocab);
//   - greedy: the first index of the maximum logit;
//   - otherwise candidates are ranked by logit descending, ties by lower id; top-k keeps the first
//     k (top_k ≤ 0 or ≥ vocab: all); p_i ∝ exp((l_i - l_max) / T) over them; min-p drops p_i <
//     min_p · p_max; top-p keeps the shortest prefix of what is left whose probability, renormalised
//     over it, reaches top_p; the token is drawn from the kept set with probabilities renormalised.
// The draw uses the Gumbel-max trick (argmax of l_i / T + g_i over the kept set, g_i Gumbel noise
// from Philox4x32-10 keyed by the row's seed, counter (i, step)), which samples exactly that
// distribution: same (seed, step, logits) → same token, on any batch position. Draws differ from the
// CPU twin's (a different RNG); the distribution is the same up to rounding at the top-p / min-p
// boundaries (top-p mass is summed in 2^-40 fixed point, deterministically).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <source_location>

namespace sparseserve::kernels::cuda {

// Per-row parameters, validated on the host (SamplingParams::validate) before upload.
struct SamplingRow {
  float temperature = 1.0f;  // 0 = greedy, else ≥ 0.01 (SamplingParams::sampling_temperature)
  int32_t top_k = 0;         // ≤ 0 = off
  float top_p = 1.0f;        // (0, 1]
  float min_p = 0.0f;        // [0, 1]
  uint64_t seed = 0;
  uint64_t step = 0;         // distinct per draw of a request (e.g. tokens generated so far)
};

// tokens[r] = argmax_i logits[r, i] (first index of the maximum).
void argmax_rows(const float* logits, int64_t ld, int32_t rows, int32_t vocab, int32_t* tokens, cudaStream_t stream,
                 std::source_location loc = std::source_location::current());

// tokens[r] = a token drawn for row r with params[r] (device array of rows entries).
void sample_rows(const float* logits, int64_t ld, int32_t rows, int32_t vocab, const SamplingRow* params,
                 int32_t* tokens, cudaStream_t stream, std::source_location loc = std::source_location::current());

}  // namespace sparseserve::kernels::cuda
