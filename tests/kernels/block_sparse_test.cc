// kernels/cpu/block_sparse (XAttention-style dynamic prefill sparsity, DESIGN.md §5.4): the block
// mass estimate against a reference that sums every (row, key) pair into its groups directly, on
// chunks that start and end off the stride and block grid; the selection's rules on masses written
// by hand; larger thresholds keep supersets.
#include "kernels/cpu/block_sparse.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

namespace sparseserve::kernels::cpu {
namespace {

// mass[qb][kb] by pairs: for each head, sum q_row·k_key over the pairs (row, key) that are causal
// and antidiagonal in their groups (row % S + key % S == S − 1), average per (row group, key group),
// softmax per (head, row group) over key groups 0..a, add each share to the block of the group's last
// existing row and of its key group.
std::vector<std::vector<double>> reference_mass(const std::vector<float>& q, int64_t stride_q, int group, int64_t q0,
                                                int64_t T, const std::vector<float>& keys, int64_t D, int64_t B,
                                                int64_t S) {
  const int64_t L = q0 + T, first_qb = q0 / B, n_qb = (L - 1) / B - first_qb + 1, n_kb = (L + B - 1) / B;
  std::vector<std::vector<double>> mass(static_cast<size_t>(n_qb), std::vector<double>(static_cast<size_t>(n_kb), 0.0));
  for (int g = 0; g < group; ++g) {
    std::map<std::pair<int64_t, int64_t>, std::pair<double, int>> sums;  // (a, c) -> (sum, pairs)
    for (int64_t row = q0; row < L; ++row) {
      for (int64_t key = 0; key <= row; ++key) {
        if (row % S + key % S != S - 1) continue;
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += double(q[(row - q0) * stride_q + g * D + d]) * keys[key * D + d];
        auto& [sum, n] = sums[{row / S, key / S}];
        sum += dot;
        ++n;
      }
    }
    std::map<int64_t, std::vector<std::pair<int64_t, double>>> by_row;  // a -> (c, score)
    for (const auto& [ac, sn] : sums) by_row[ac.first].push_back({ac.second, sn.first / sn.second / std::sqrt(double(D))});
    for (const auto& [a, scores] : by_row) {
      double mx = -INFINITY, tot = 0;
      for (const auto& [c, s] : scores) mx = std::max(mx, s);
      for (const auto& [c, s] : scores) tot += std::exp(s - mx);
      const int64_t qb = std::min(L - 1, a * S + S - 1) / B - first_qb;
      for (const auto& [c, s] : scores) mass[static_cast<size_t>(qb)][static_cast<size_t>(c * S / B)] += std::exp(s - mx) / tot;
    }
  }
  return mass;
}

TEST(BlockSparseTest, MassEqualsPairsSummedIntoTheirGroups) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Case {
    int64_t q0, T, B, S;
    int group;
  };
  for (const Case k : {Case{0, 50, 16, 4, 1}, Case{37, 29, 16, 4, 2}, Case{5, 70, 8, 8, 3}, Case{64, 64, 32, 8, 2},
                       Case{13, 3, 16, 4, 1}, Case{7, 45, 16, 6, 2}}) {
    SCOPED_TRACE("q0 " + std::to_string(k.q0) + " T " + std::to_string(k.T) + " B " + std::to_string(k.B) + " S " +
                 std::to_string(k.S));
    const int64_t D = 8, L = k.q0 + k.T, stride_q = k.group * D + 3;
    std::vector<float> q(static_cast<size_t>(k.T * stride_q)), keys(static_cast<size_t>(L * D));
    for (float& x : q) x = nd(rng);
    for (float& x : keys) x = nd(rng);
    const BlockMass m = xattention_block_mass(q.data(), stride_q, k.group, k.q0, k.T, keys.data(), D,
                                              static_cast<int32_t>(k.B), static_cast<int32_t>(k.S));
    const auto want = reference_mass(q, stride_q, k.group, k.q0, k.T, keys, D, k.B, k.S);
    ASSERT_EQ(m.n_qblocks, static_cast<int64_t>(want.size()));
    ASSERT_EQ(m.first_qblock, k.q0 / k.B);
    ASSERT_EQ(m.n_kblocks, (L + k.B - 1) / k.B);
    for (int64_t qi = 0; qi < m.n_qblocks; ++qi) {
      double total = 0;
      for (int64_t kb = 0; kb < m.n_kblocks; ++kb) {
        // The library's dot products are fp32 (vec::dot), the reference's double.
        EXPECT_NEAR(m.row(m.first_qblock + qi)[kb], want[static_cast<size_t>(qi)][static_cast<size_t>(kb)], 1e-5)
            << "block " << qi << ", " << kb;
        total += m.row(m.first_qblock + qi)[kb];
      }
      EXPECT_GT(total, 0.0);
    }
  }
}

TEST(BlockSparseTest, SelectionKeepsTheFirstAndDiagonalThenTheHeaviest) {
  BlockMass m;
  m.block_tokens = 16;
  m.first_qblock = 4;
  m.n_qblocks = 2;
  m.n_kblocks = 6;
  // Query block 4: blocks 0..4 (0.1, 0.5, 0.0, 0.3, 0.1); query block 5: blocks 0..5, 1 and 3 tied.
  m.mass = {0.1, 0.5, 0.0, 0.3, 0.1, 0.0,  //
            0.0, 0.2, 0.1, 0.2, 0.0, 0.5};
  const auto rows = [&](float threshold) {
    const BlockMask k = select_blocks(m, threshold);
    return std::vector<std::vector<uint8_t>>{std::vector<uint8_t>(k.row(4), k.row(4) + 6),
                                             std::vector<uint8_t>(k.row(5), k.row(5) + 6)};
  };
  using R = std::vector<std::vector<uint8_t>>;
  EXPECT_EQ(rows(0.0f), (R{{1, 0, 0, 0, 1, 0}, {1, 0, 0, 0, 0, 1}})) << "block 0 and the diagonal alone";
  EXPECT_EQ(rows(0.5f), (R{{1, 1, 0, 0, 1, 0}, {1, 0, 0, 0, 0, 1}})) << "0.2 + 0.5 reaches 0.5; 0.5 already does";
  EXPECT_EQ(rows(0.6f), (R{{1, 1, 0, 0, 1, 0}, {1, 1, 0, 0, 0, 1}})) << "of the tie, the lower block first";
  EXPECT_EQ(rows(0.8f), (R{{1, 1, 0, 1, 1, 0}, {1, 1, 0, 1, 0, 1}}));
  EXPECT_EQ(rows(0.95f), (R{{1, 1, 0, 1, 1, 0}, {1, 1, 1, 1, 0, 1}})) << "everything with mass";
  m.mass.assign(12, 0.0);
  EXPECT_EQ(rows(1.0f), (R{{1, 0, 0, 0, 1, 0}, {1, 0, 0, 0, 0, 1}})) << "no mass: 0 and the diagonal";
}

TEST(BlockSparseTest, LargerThresholdsKeepSupersets) {
  std::mt19937_64 rng(11);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  const int64_t D = 16, q0 = 40, T = 200, L = q0 + T;
  std::vector<float> q(static_cast<size_t>(T * 2 * D)), keys(static_cast<size_t>(L * D));
  for (float& x : q) x = nd(rng);
  for (float& x : keys) x = nd(rng);
  const BlockMass m = xattention_block_mass(q.data(), 2 * D, 2, q0, T, keys.data(), D, 16, 4);
  BlockMask before = select_blocks(m, 0.0f);
  for (const float t : {0.3f, 0.6f, 0.9f, 0.99f}) {
    const BlockMask now = select_blocks(m, t);
    for (size_t i = 0; i < now.allowed.size(); ++i) EXPECT_GE(now.allowed[i], before.allowed[i]) << t;
    before = now;
  }
  const BlockMask direct = xattention_block_mask(q.data(), 2 * D, 2, q0, T, keys.data(), D, 16, 4, 0.6f);
  EXPECT_EQ(direct.allowed, select_blocks(m, 0.6f).allowed);
}

}  // namespace
}  // namespace sparseserve::kernels::cpu
