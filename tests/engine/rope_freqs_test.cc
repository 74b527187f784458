#include "engine/rope_freqs.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

namespace sparseserve {
namespace {

ModelConfig base() {
  ModelConfig c;
  c.rope_theta = 500000.0f;
  c.rope_dim = 128;
  c.head_dim = 128;
  return c;
}

TEST(RopeFreqs, PlainIsThetaPower) {
  const auto f = rope_inv_freq(base(), {});
  ASSERT_EQ(f.size(), 64u);
  for (size_t i = 0; i < f.size(); ++i) EXPECT_FLOAT_EQ(f[i], static_cast<float>(std::pow(500000.0, -2.0 * i / 128)));
}

TEST(RopeFreqs, Llama3KeepsHighSlowsLowInterpolatesBetween) {
  ModelConfig c = base();
  c.rope_scaling = {RopeScaling::Kind::kLlama3, 8.0f, 1.0f, 4.0f, 8192};
  const auto plain = rope_inv_freq(base(), {});
  const auto f = rope_inv_freq(c, {});
  int kept = 0, slowed = 0, mixed = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    const double wavelen = 2 * std::numbers::pi / plain[i];
    if (wavelen < 8192 / 4.0) {
      EXPECT_FLOAT_EQ(f[i], plain[i]);
      ++kept;
    } else if (wavelen > 8192 / 1.0) {
      EXPECT_NEAR(f[i], plain[i] / 8.0, 1e-6 * plain[i]);
      ++slowed;
    } else {
      EXPECT_LT(f[i], plain[i]);
      EXPECT_GT(f[i], plain[i] / 8.0);
      ++mixed;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(slowed, 0);
  EXPECT_GT(mixed, 0);
}

TEST(RopeFreqs, LinearAndFactorTensorDivide) {
  ModelConfig c = base();
  c.rope_scaling.kind = RopeScaling::Kind::kLinear;
  c.rope_scaling.factor = 4.0f;
  const auto plain = rope_inv_freq(base(), {});
  const auto lin = rope_inv_freq(c, {});
  std::vector<float> factors(64, 2.0f);
  const auto fac = rope_inv_freq(base(), factors);
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_FLOAT_EQ(lin[i], plain[i] / 4.0f);
    EXPECT_FLOAT_EQ(fac[i], plain[i] / 2.0f);
  }
}

}  // namespace
}  // namespace sparseserve
