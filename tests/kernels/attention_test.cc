// Dense causal GQA attention against a float64 softmax(q·k/√d)·v over the allowed keys.
#include "kernels/cpu/attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace sparseserve::kernels::cpu {
namespace {

struct Shape {
  int64_t T, start, Hq, Hkv, D;
};

class AttentionTest : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionTest, MatchesFloat64Reference) {
  const Shape s = GetParam();
  std::mt19937 rng(static_cast<unsigned>(s.T * 1000 + s.start * 10 + s.Hq));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t L = s.start + s.T, qs = s.Hq * s.D + 3;  // padded query rows
  std::vector<float> q(s.T * qs), k(L * s.Hkv * s.D), v(L * s.Hkv * s.D), out(s.T * s.Hq * s.D, NAN);
  for (auto* a : {&q, &k, &v}) for (auto& x : *a) x = 2.0f * nd(rng);
  attention_causal(q.data(), qs, k.data(), v.data(), out.data(), s.T, s.start, s.Hq, s.Hkv, s.D);
  const int64_t group = s.Hq / s.Hkv;
  for (int64_t t = 0; t < s.T; ++t) {
    for (int64_t h = 0; h < s.Hq; ++h) {
      const int64_t kvh = h / group, n = s.start + t + 1;
      std::vector<double> p(n);
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < n; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < s.D; ++d) dot += double(q[t * qs + h * s.D + d]) * k[(j * s.Hkv + kvh) * s.D + d];
        p[j] = dot / std::sqrt(double(s.D));
        mx = std::max(mx, p[j]);
      }
      for (auto& x : p) sum += (x = std::exp(x - mx));
      for (int64_t d = 0; d < s.D; ++d) {
        double ref = 0;
        for (int64_t j = 0; j < n; ++j) ref += p[j] / sum * v[(j * s.Hkv + kvh) * s.D + d];
        const float got = out[(t * s.Hq + h) * s.D + d];
        ASSERT_TRUE(std::isfinite(got));
        EXPECT_NEAR(got, ref, 2e-5) << "t=" << t << " h=" << h << " d=" << d;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(Shape{1, 0, 4, 4, 16}, Shape{7, 0, 9, 3, 64}, Shape{1, 100, 9, 3, 64},
                                           Shape{5, 33, 8, 1, 32}, Shape{17, 5, 8, 2, 128}));

}  // namespace
}  // namespace sparseserve::kernels::cpu
