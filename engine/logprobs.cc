#include "engine/logprobs.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace sparseserve {

TokenLogprob top_logprobs(std::span<const float> row, int32_t k, double& lse) {
  double mx = -INFINITY, sum = 0;
  for (float x : row) mx = std::max<double>(mx, x);
  for (float x : row) sum += std::exp(x - mx);
  lse = mx + std::log(sum);
  TokenLogprob lp;
  std::vector<int32_t> idx(row.size());
  std::iota(idx.begin(), idx.end(), 0);
  const auto kk = static_cast<size_t>(k);
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(kk), idx.end(),
                    [&](int32_t a, int32_t b) { return row[static_cast<size_t>(a)] > row[static_cast<size_t>(b)]; });
  for (size_t i = 0; i < kk; ++i) lp.top.emplace_back(idx[i], static_cast<float>(row[static_cast<size_t>(idx[i])] - lse));
  return lp;
}

int32_t logprob_rank(std::span<const float> row, int32_t token) {
  const float x = row[static_cast<size_t>(token)];
  return static_cast<int32_t>(std::count_if(row.begin(), row.end(), [x](float y) { return y >= x; }));
}

}  // namespace sparseserve
