#include "kernels/cpu/page_select.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace sparseserve::kernels::cpu {

float quest_bound(const float* q, const float* kmin, const float* kmax, int64_t D) {
  float s = 0.0f;
  for (int64_t d = 0; d < D; ++d) s += std::max(q[d] * kmax[d], q[d] * kmin[d]);
  return s;
}

float page_score(const float* q, int64_t q_head_stride, int32_t group, const float* kmin, const float* kmax,
                 int32_t valid_subpages, int64_t D) {
  float best = -INFINITY;
  for (int32_t s = 0; s < valid_subpages; ++s) {
    for (int32_t g = 0; g < group; ++g) {
      best = std::max(best, quest_bound(q + g * q_head_stride, kmin + s * D, kmax + s * D, D));
    }
  }
  return best;
}

std::vector<int32_t> select_pages(std::span<const float> scores, int64_t seq_len, int32_t page_tokens,
                                  int64_t sink_tokens, int64_t token_budget) {
  const auto n_blocks = static_cast<int32_t>((seq_len + page_tokens - 1) / page_tokens);
  const auto sink_blocks = static_cast<int32_t>(std::min<int64_t>((sink_tokens + page_tokens - 1) / page_tokens, n_blocks));
  std::vector<uint8_t> keep(static_cast<size_t>(n_blocks), 0);
  int64_t tokens = 0;
  auto block_tokens = [&](int32_t b) { return std::min<int64_t>(page_tokens, seq_len - int64_t{b} * page_tokens); };
  auto take = [&](int32_t b) {
    keep[static_cast<size_t>(b)] = 1;
    tokens += block_tokens(b);
  };
  for (int32_t b = 0; b < sink_blocks; ++b) take(b);
  if (n_blocks > 0 && !keep[static_cast<size_t>(n_blocks - 1)]) take(n_blocks - 1);
  std::vector<int32_t> rest;
  for (int32_t b = sink_blocks; b < n_blocks - 1; ++b) rest.push_back(b);
  std::stable_sort(rest.begin(), rest.end(), [&](int32_t a, int32_t b) {
    return scores[static_cast<size_t>(a)] > scores[static_cast<size_t>(b)];
  });
  for (int32_t b : rest) {
    if (tokens + block_tokens(b) > token_budget) break;
    take(b);
  }
  std::vector<int32_t> out;
  for (int32_t b = 0; b < n_blocks; ++b) {
    if (keep[static_cast<size_t>(b)]) out.push_back(b);
  }
  return out;
}

}  // namespace sparseserve::kernels::cpu
