// RMSNorm, fused add+norm, SiLU·mul, RoPE (both layouts) and softmax against float64 formulas.
#include "kernels/cpu/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace sparseserve::kernels::cpu {
namespace {

std::vector<float> randn(size_t n, std::mt19937& rng, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(Ops, RmsnormAndFusedAdd) {
  std::mt19937 rng(7);
  const int64_t rows = 9, width = 77;
  auto x = randn(rows * width, rng), w = randn(width, rng), d = randn(rows * width, rng);
  std::vector<float> out(rows * width, NAN), res = x, out2(rows * width, NAN);
  rmsnorm(x.data(), w.data(), out.data(), rows, width, 1e-5f);
  add_rmsnorm(res.data(), d.data(), w.data(), out2.data(), rows, width, 1e-5f);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0, ss2 = 0;
    for (int64_t i = 0; i < width; ++i) {
      ss += double(x[r * width + i]) * x[r * width + i];
      const double s = double(x[r * width + i]) + d[r * width + i];
      ss2 += s * s;
    }
    const double inv = 1.0 / std::sqrt(ss / width + 1e-5), inv2 = 1.0 / std::sqrt(ss2 / width + 1e-5);
    for (int64_t i = 0; i < width; ++i) {
      EXPECT_NEAR(out[r * width + i], x[r * width + i] * inv * w[i], 1e-5);
      const double s = double(x[r * width + i]) + d[r * width + i];
      EXPECT_NEAR(res[r * width + i], s, 1e-6);
      EXPECT_NEAR(out2[r * width + i], s * inv2 * w[i], 1e-5);
    }
  }
}

TEST(Ops, SiluMul) {
  std::mt19937 rng(8);
  const int64_t rows = 3, width = 21;
  auto gu = randn(rows * 2 * width, rng, 3.0f);
  std::vector<float> out(rows * width, NAN);
  silu_mul(gu.data(), out.data(), rows, width);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < width; ++i) {
      const double g = gu[r * 2 * width + i], u = gu[r * 2 * width + width + i];
      EXPECT_NEAR(out[r * width + i], g / (1 + std::exp(-g)) * u, 1e-5 * (1 + std::abs(g * u)));
    }
  }
}

class RopeTest : public ::testing::TestWithParam<bool> {};

TEST_P(RopeTest, RotatesEachPairByPositionTimesFrequency) {
  const bool interleaved = GetParam();
  std::mt19937 rng(9);
  const int64_t rows = 4, heads = 3, d = 16, rope_dim = 12, stride = heads * d + 5;
  auto x = randn(rows * stride, rng);
  auto orig = x;
  std::vector<float> inv_freq(rope_dim / 2);
  for (int64_t i = 0; i < rope_dim / 2; ++i) inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / rope_dim));
  const std::vector<int32_t> pos = {0, 1, 777, 8191};
  rope(x.data(), stride, pos.data(), rows, heads, d, rope_dim, inv_freq.data(), interleaved);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      const float* o = orig.data() + r * stride + h * d;
      const float* y = x.data() + r * stride + h * d;
      for (int64_t i = 0; i < rope_dim / 2; ++i) {
        const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + rope_dim / 2;
        const double ang = double(pos[r]) * inv_freq[i];
        EXPECT_NEAR(y[a], o[a] * std::cos(ang) - o[b] * std::sin(ang), 2e-6);
        EXPECT_NEAR(y[b], o[a] * std::sin(ang) + o[b] * std::cos(ang), 2e-6);
      }
      for (int64_t j = rope_dim; j < d; ++j) EXPECT_EQ(y[j], o[j]) << "dims past rope_dim untouched";
    }
    for (int64_t j = heads * d; j < stride; ++j) EXPECT_EQ(x[r * stride + j], orig[r * stride + j]);
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, RopeTest, ::testing::Values(true, false));

TEST(Ops, SoftmaxSumsToOneAndIsStable) {
  std::vector<float> x = {1000.0f, 1001.0f, -5.0f, 1000.5f};
  softmax(x.data(), 4);
  double s = 0;
  for (float v : x) s += v;
  EXPECT_NEAR(s, 1.0, 1e-6);
  EXPECT_GT(x[1], x[3]);
  EXPECT_GT(x[3], x[0]);
  EXPECT_NEAR(x[2], 0.0, 1e-30);
}

}  // namespace
}  // namespace sparseserve::kernels::cpu
