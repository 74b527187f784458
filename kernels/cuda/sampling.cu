// Sampling kernels: one thread block per row; the passes over the row (L2-resident for a few rows):
//   greedy:   one argmax pass;
//   sampled:  max logit (weights w_i = exp((l_i - l_max) / T)); if top-k, its cutoff
//             (block_select_cutoff, measure 1); Z = Σ w over top-k and w ≥ min_p in 2^-40 fixed
//             point and the top-p cutoff (block_select_cutoff, measure w); then one Gumbel-max pass
//             over the kept set (inside both cutoffs and w ≥ min_p).
// Plain temperature sampling needs only the max and the Gumbel-max passes.
#include "kernels/cuda/sampling.h"

#include <cmath>

#include "kernels/cuda/block_select.cuh"
#include "kernels/cuda/cuda_check.h"

namespace sparseserve::kernels::cuda {

namespace {

constexpr int kThreads = 512;
constexpr double kFixedOne = 1099511627776.0;  // 2^40: probability-mass fixed point

// Philox4x32-10 (Salmon et al., SC'11): counter-based, so any (key, counter) is drawn independently.
__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kM0, c.x), lo0 = kM0 * c.x;
    const uint32_t hi1 = __umulhi(kM1, c.z), lo1 = kM1 * c.z;
    c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    k.x += kW0;
    k.y += kW1;
  }
  return c;
}

// Gumbel noise for element i of a draw: -log(-log(u)), u uniform in (0, 1) from 24 random bits.
__device__ __forceinline__ float gumbel(uint64_t seed, uint64_t step, int32_t i) {
  const uint4 c = make_uint4(static_cast<uint32_t>(i) >> 2, 0u, static_cast<uint32_t>(step),
                             static_cast<uint32_t>(step >> 32));
  const uint4 r = philox4x32_10(c, make_uint2(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)));
  const uint32_t bits = (i & 3) == 0 ? r.x : (i & 3) == 1 ? r.y : (i & 3) == 2 ? r.z : r.w;
  const float u = (static_cast<float>(bits >> 8) + 0.5f) * (1.0f / 16777216.0f);
  return -logf(-logf(u));
}

// (value, index) with "better" = larger value, then lower index.
struct Best {
  float v;
  int32_t i;
};

__device__ __forceinline__ Best better(Best a, Best b) { return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a; }

// Block argmax; every thread gets the result. Call from all threads.
__device__ Best block_best(Best b, Best* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    b = better(b, Best{__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.i, o)});
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = b;
  __syncthreads();
  b = lane < n_warps ? scratch[lane] : Best{-INFINITY, INT32_MAX};
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    b = better(b, Best{__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.i, o)});
  }
  return b;
}

// Logit i of a row as the sampler sees it: NaN counts as −∞ (sampling.h).
__device__ __forceinline__ float logit_at(const float* row, int32_t i) {
  const float l = row[i];
  return l != l ? -INFINITY : l;
}

// The largest logit and its first index; every logit −∞ or NaN: (−∞, 0).
__device__ Best row_argmax(const float* row, int32_t vocab, Best* scratch) {
  Best b{-INFINITY, INT32_MAX};
  for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) b = better(b, Best{logit_at(row, i), i});
  return block_best(b, scratch);
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(const float* logits, int64_t ld, int32_t vocab,
                                                          int32_t* tokens) {
  __shared__ Best scratch[32];
  const Best b = row_argmax(logits + blockIdx.x * ld, vocab, scratch);
  if (threadIdx.x == 0) tokens[blockIdx.x] = b.i;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, int64_t ld, int32_t vocab,
                                                          const SamplingRow* params, int32_t* tokens) {
  __shared__ Best scratch[32];
  __shared__ SelectScratch select;
  const float* row = logits + blockIdx.x * ld;
  const SamplingRow p = params[blockIdx.x];
  if (p.temperature == 0.0f || p.top_k == 1) {
    const Best b = row_argmax(row, vocab, scratch);
    if (threadIdx.x == 0) tokens[blockIdx.x] = b.i;
    return;
  }
  const float inv_t = 1.0f / p.temperature;
  const bool top_k = p.top_k > 0 && p.top_k < vocab;
  const bool top_p = p.top_p < 1.0f;
  const bool min_p = p.min_p > 0.0f;

  // Weights and Gumbel scores use l - l_max (≤ 0), so no temperature overflows them. A row whose
  // largest logit is not finite takes the greedy token (the block agrees on it: uniform exit).
  const Best top = row_argmax(row, vocab, scratch);
  if (!isfinite(top.v)) {
    if (threadIdx.x == 0) tokens[blockIdx.x] = top.i;
    return;
  }
  const float l_max = top.v;
  const auto weight = [&](float l) { return expf((l - l_max) * inv_t); };

  Cutoff cut_k = cutoff_all();
  if (top_k) {
    const auto count_item = [&](int32_t i) { return SelectItem{order_key(logit_at(row, i)), 1ull}; };
    cut_k = block_select_cutoff(vocab, static_cast<uint64_t>(p.top_k), count_item, select);
  }

  Cutoff cut_p = cutoff_all();
  if (top_p) {
    const auto mass_item = [&](int32_t i) {
      const float l = logit_at(row, i);
      const uint32_t key = order_key(l);
      const float w = weight(l);
      const bool kept = cut_k.inside(key, i) && (!min_p || w >= p.min_p);  // min-p before top-p (vLLM V1)
      return SelectItem{key, kept ? static_cast<uint64_t>(static_cast<double>(w) * kFixedOne + 0.5) : 0ull};
    };
    unsigned long long z = 0;
    for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) z += mass_item(i).measure;
    unsigned long long total = 0;
    (void)block_inclusive_scan(z, select.warp_totals, total);
    const double target = ceil(static_cast<double>(p.top_p) * static_cast<double>(total));
    cut_p = block_select_cutoff(vocab, target < 1.0 ? 1ull : static_cast<uint64_t>(target), mass_item, select);
  }

  Best b{-INFINITY, INT32_MAX};
  for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float l = logit_at(row, i);
    const uint32_t key = order_key(l);
    if (!cut_k.inside(key, i) || !cut_p.inside(key, i)) continue;
    if (min_p && weight(l) < p.min_p) continue;
    b = better(b, Best{(l - l_max) * inv_t + gumbel(p.seed, p.step, i), i});
  }
  b = block_best(b, scratch);
  if (threadIdx.x == 0) tokens[blockIdx.x] = b.i;
}

void check_rows(const float* logits, int64_t ld, int32_t rows, int32_t vocab, int32_t* tokens,
                const std::source_location& loc) {
  check(rows >= 0 && vocab >= 1 && ld >= vocab, "sampling: rows ≥ 0, vocab ≥ 1 and ld ≥ vocab", loc);
  check(rows == 0 || (logits != nullptr && tokens != nullptr), "sampling: null pointer", loc);
}

}  // namespace

void argmax_rows(const float* logits, int64_t ld, int32_t rows, int32_t vocab, int32_t* tokens, cudaStream_t stream,
                 std::source_location loc) {
  check_rows(logits, ld, rows, vocab, tokens, loc);
  if (rows == 0) return;
  argmax_kernel<<<rows, kThreads, 0, stream>>>(logits, ld, vocab, tokens);
  check_cuda(cudaGetLastError(), "argmax_kernel launch", loc);
}

void sample_rows(const float* logits, int64_t ld, int32_t rows, int32_t vocab, const SamplingRow* params,
                 int32_t* tokens, cudaStream_t stream, std::source_location loc) {
  check_rows(logits, ld, rows, vocab, tokens, loc);
  if (rows == 0) return;
  check(params != nullptr, "sample_rows: null params", loc);
  sample_kernel<<<rows, kThreads, 0, stream>>>(logits, ld, vocab, params, tokens);
  check_cuda(cudaGetLastError(), "sample_kernel launch", loc);
}

}  // namespace sparseserve::kernels::cuda
