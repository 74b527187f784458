#include "kernels/cpu/block_sparse.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/vec.h"

namespace sparseserve::kernels::cpu {

BlockMass xattention_block_mass(const float* q, int64_t q_row_stride, int32_t group, int64_t q0, int64_t T,
                                const float* keys, int64_t D, int32_t block_tokens, int32_t stride) {
  const int64_t B = block_tokens, S = stride, L = q0 + T;
  BlockMass m;
  m.block_tokens = B;
  m.first_qblock = q0 / B;
  m.n_qblocks = (L - 1) / B - m.first_qblock + 1;
  m.n_kblocks = (L + B - 1) / B;
  const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(D));

  // Row groups a cover positions [aS, aS+S); key groups c likewise; only positions that exist count.
  // Each row group writes its share of block mass into its own row of `group_mass` (key blocks
  // 0..its query block), and the rows are summed below in row-group order: the mask does not depend
  // on the thread count or the schedule.
  const int64_t a_first = q0 / S, a_last = (L - 1) / S;
  const int64_t n_groups = a_last - a_first + 1;
  std::vector<double> group_mass(static_cast<size_t>(n_groups * m.n_kblocks), 0.0);
  const auto group_qblock = [&](int64_t a) {
    // A row group may straddle two query blocks only if S does not divide B; it counts for the
    // block of its last existing row.
    return std::min(L - 1, a * S + S - 1) / B - m.first_qblock;
  };
#pragma omp parallel
  {
    std::vector<double> s, p;
#pragma omp for schedule(dynamic, 1)
    for (int64_t a = a_first; a <= a_last; ++a) {
      const int64_t n_c = a + 1;  // key groups 0..a (causal)
      double* out = group_mass.data() + (a - a_first) * m.n_kblocks;
      s.assign(static_cast<size_t>(n_c), 0.0);
      p.resize(static_cast<size_t>(n_c));
      for (int32_t g = 0; g < group; ++g) {
        for (int64_t c = 0; c < n_c; ++c) {
          double sum = 0.0;
          int cnt = 0;
          for (int64_t r = 0; r < S; ++r) {
            const int64_t row = a * S + S - 1 - r, key = c * S + r;
            if (row < q0 || row >= L || key > row) continue;
            sum += vec::dot(q + (row - q0) * q_row_stride + g * D, keys + key * D, D);
            ++cnt;
          }
          s[static_cast<size_t>(c)] = cnt > 0 ? sum / cnt * inv_sqrt_d : -INFINITY;
        }
        double mx = -INFINITY;
        for (double v : s) mx = std::max(mx, v);
        if (!std::isfinite(mx)) continue;
        double tot = 0.0;
        for (size_t c = 0; c < s.size(); ++c) tot += (p[c] = std::exp(s[c] - mx));
        for (int64_t c = 0; c < n_c; ++c) out[c * S / B] += p[static_cast<size_t>(c)] / tot;
      }
    }
  }
  m.mass.assign(static_cast<size_t>(m.n_qblocks * m.n_kblocks), 0.0);
  for (int64_t a = a_first; a <= a_last; ++a) {
    const double* from = group_mass.data() + (a - a_first) * m.n_kblocks;
    double* to = m.mass.data() + group_qblock(a) * m.n_kblocks;
    for (int64_t kb = 0; kb < m.n_kblocks; ++kb) to[kb] += from[kb];
  }
  return m;
}

BlockMask select_blocks(const BlockMass& mass, float threshold) {
  BlockMask m;
  m.block_tokens = mass.block_tokens;
  m.first_qblock = mass.first_qblock;
  m.n_qblocks = mass.n_qblocks;
  m.n_kblocks = mass.n_kblocks;
  m.allowed.assign(static_cast<size_t>(m.n_qblocks * m.n_kblocks), 0);
  std::vector<int64_t> order;
  for (int64_t qi = 0; qi < m.n_qblocks; ++qi) {
    const int64_t qb = m.first_qblock + qi;
    uint8_t* row = m.allowed.data() + qi * m.n_kblocks;
    const double* mrow = mass.mass.data() + qi * m.n_kblocks;
    double total = 0.0;
    for (int64_t kb = 0; kb <= qb; ++kb) total += mrow[kb];
    row[0] = 1;
    row[qb] = 1;
    double kept = mrow[0] + (qb > 0 ? mrow[qb] : 0.0);
    order.clear();
    for (int64_t kb = 1; kb < qb; ++kb) order.push_back(kb);
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return mrow[x] > mrow[y]; });
    for (int64_t kb : order) {
      if (total <= 0.0 || kept >= threshold * total) break;
      row[kb] = 1;
      kept += mrow[kb];
    }
  }
  return m;
}

BlockMask xattention_block_mask(const float* q, int64_t q_row_stride, int32_t group, int64_t q0, int64_t T,
                                const float* keys, int64_t D, int32_t block_tokens, int32_t stride, float threshold) {
  return select_blocks(xattention_block_mass(q, q_row_stride, group, q0, T, keys, D, block_tokens, stride), threshold);
}

}  // namespace sparseserve::kernels::cpu
