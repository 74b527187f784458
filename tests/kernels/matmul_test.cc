// matmul (fused small-M kernels and the dequantize+sgemm path) against a float64 dot product of
// dequantize_row's output, on fresh random weights of every type the fast paths special-case.
#include "kernels/cpu/matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/half.h"

namespace sparseserve::kernels::cpu {
namespace {

// Random bytes for `rows` rows of `cols` elements of `type`, with finite, moderate fp16 scales
// where the block layout has them (first 2 or 4 bytes of Q8_0/Q4_1 blocks), plain values otherwise.
std::vector<std::byte> random_weights(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const size_t rb = row_bytes(type, cols);
  std::vector<std::byte> out(rb * static_cast<size_t>(rows));
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& b : out) b = static_cast<std::byte>(byte(rng));
  auto put16 = [&](size_t off, uint16_t v) { std::memcpy(out.data() + off, &v, 2); };
  const int64_t n = rows * cols;
  switch (type) {
    case GgmlType::F32:
      for (int64_t i = 0; i < n; ++i) {
        const float f = normal(rng);
        std::memcpy(out.data() + i * 4, &f, 4);
      }
      break;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) put16(static_cast<size_t>(i) * 2, f32_to_fp16(normal(rng)));
      break;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) put16(static_cast<size_t>(i) * 2, f32_to_bf16(normal(rng)));
      break;
    case GgmlType::Q8_0:
      for (size_t b = 0; b < out.size(); b += 34) put16(b, f32_to_fp16(0.01f * normal(rng)));
      break;
    case GgmlType::Q4_1:
      for (size_t b = 0; b < out.size(); b += 20) {
        put16(b, f32_to_fp16(0.02f * std::abs(normal(rng))));
        put16(b + 2, f32_to_fp16(-0.1f * std::abs(normal(rng))));
      }
      break;
    case GgmlType::Q4_0:
      for (size_t b = 0; b < out.size(); b += 18) put16(b, f32_to_fp16(0.02f * normal(rng)));
      break;
    default:
      ADD_FAILURE() << "no random generator for this type";
  }
  return out;
}

struct Case {
  GgmlType type;
  int64_t M, N, K;
  bool bias;
  int64_t extra_ld;
};

class MatmulTest : public ::testing::TestWithParam<Case> {};

TEST_P(MatmulTest, MatchesFloat64DotOfDequantizedRows) {
  const Case c = GetParam();
  std::mt19937 rng(1234 + static_cast<unsigned>(c.M * 31 + c.N * 7 + c.K));
  auto bytes = random_weights(c.type, c.N, c.K, rng);
  const WeightMatrix w{c.type, c.N, c.K, bytes.data(), row_bytes(c.type, c.K)};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(c.M * c.K)), bias(static_cast<size_t>(c.N));
  for (auto& v : x) v = normal(rng);
  for (auto& v : bias) v = normal(rng);
  const int64_t ldy = c.N + c.extra_ld;
  std::vector<float> y(static_cast<size_t>(c.M * ldy), std::nanf(""));  // poisoned
  matmul(x.data(), c.M, w, y.data(), c.bias ? bias.data() : nullptr, ldy);

  std::vector<float> row(static_cast<size_t>(c.K));
  for (int64_t n = 0; n < c.N; ++n) {
    dequantize_weight_row(w, n, row.data());
    for (int64_t m = 0; m < c.M; ++m) {
      double ref = c.bias ? bias[n] : 0.0, mag = 0.0;
      for (int64_t k = 0; k < c.K; ++k) {
        ref += static_cast<double>(row[k]) * x[m * c.K + k];
        mag += std::abs(static_cast<double>(row[k]) * x[m * c.K + k]);
      }
      const float got = y[m * ldy + n];
      ASSERT_TRUE(std::isfinite(got)) << "m=" << m << " n=" << n;
      EXPECT_NEAR(got, ref, 1e-5 * mag + 1e-6) << "m=" << m << " n=" << n;
    }
    for (int64_t m = 0; m < c.M; ++m) {
      for (int64_t j = c.N; j < ldy; ++j) ASSERT_TRUE(std::isnan(y[m * ldy + j])) << "wrote past N";
    }
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q4_0}) {
    for (int64_t M : {1, 2, 3, 5, 8, 9, 33}) out.push_back({t, M, 67, 96, M % 2 == 1, M == 3 ? 5 : 0});
  }
  out.push_back({GgmlType::F32, 4, 19, 37, true, 0});  // width not a multiple of 8
  out.push_back({GgmlType::BF16, 2, 19, 37, false, 3});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Types, MatmulTest, ::testing::ValuesIn(cases()));

TEST(Matmul, RejectsWidthNotMultipleOfBlock) {
  std::vector<std::byte> bytes(64);
  const WeightMatrix w{GgmlType::Q8_0, 1, 40, bytes.data(), 64};
  std::vector<float> x(40), y(1);
  EXPECT_ANY_THROW(matmul(x.data(), 1, w, y.data()));
}

}  // namespace
}  // namespace sparseserve::kernels::cpu

namespace sparseserve::kernels::cpu {
namespace {

// Batch-invariant numerics: a row's result is bit-identical whatever the other rows are.
TEST(MatmulInvariant, RowResultsDoNotDependOnBatch) {
  std::mt19937 rng(99);
  for (GgmlType t : {GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F32, GgmlType::BF16}) {
    auto bytes = random_weights(t, 40, 128, rng);
    const WeightMatrix w{t, 40, 128, bytes.data(), row_bytes(t, 128)};
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(37 * 128));
    for (auto& v : x) v = nd(rng);
    std::vector<float> all(37 * 40), one(40);
    matmul(x.data(), 37, w, all.data(), nullptr, 0, Numerics::kBatchInvariant);
    for (int64_t m : {0, 5, 8, 36}) {
      matmul(x.data() + m * 128, 1, w, one.data(), nullptr, 0, Numerics::kBatchInvariant);
      EXPECT_EQ(std::memcmp(one.data(), all.data() + m * 40, 40 * sizeof(float)), 0) << "row " << m;
    }
  }
}

}  // namespace
}  // namespace sparseserve::kernels::cpu
