#include "engine/logprobs.h"
#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "common/errors.h"

namespace sparseserve {
namespace {

std::vector<float> random_logits(int n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

TEST(Sampler, GreedyIsArgmax) {
  SamplingParams p;
  p.temperature = 0.0f;
  Sampler s(p, {});
  auto l = random_logits(1000, 1);
  const auto want = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
  EXPECT_EQ(s.sample(l), want);
}

TEST(Sampler, TopK1IsGreedyAtAnyTemperature) {
  SamplingParams p;
  p.temperature = 5.0f;
  p.top_k = 1;
  Sampler s(p, {});
  for (unsigned i = 0; i < 20; ++i) {
    auto l = random_logits(500, i);
    const auto want = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    EXPECT_EQ(s.sample(l), want);
  }
}

TEST(Sampler, ATinyTemperatureSamplesAtTheFloor) {
  // 0 < T < 0.01 draws at 0.01 (vLLM's floor), on both samplers (the engine hands the GPU rows
  // sampling_temperature()): logits a unit apart are then 100 nats apart, so the draw is the argmax.
  for (const float t : {1e-40f, 2.9e-39f, 1e-30f, 0.005f}) {
    SamplingParams p;
    p.temperature = t;
    EXPECT_EQ(p.sampling_temperature(), SamplingParams::kMinTemperature) << t;
    for (uint64_t seed = 0; seed < 50; ++seed) {
      p.seed = seed;
      Sampler s(p, {});
      std::vector<float> l = {0.0f, 1.0f, 2.0f, 5.0f, 3.0f, 4.0f, -1.0f, 2.0f};
      EXPECT_EQ(s.sample(l), 3) << t << " seed " << seed;
    }
  }
  SamplingParams p;
  for (const float t : {0.0f, 0.01f, 0.7f, 2.0f}) {
    p.temperature = t;
    EXPECT_EQ(p.sampling_temperature(), t);
  }
}

TEST(Logprobs, RankCountsTheIdsAtLeastAsLikelyAsVllmDoes) {
  const std::vector<float> row = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 2.0f};
  EXPECT_EQ(logprob_rank(row, 1), 2);  // tied with id 3: both count
  EXPECT_EQ(logprob_rank(row, 3), 2);
  EXPECT_EQ(logprob_rank(row, 2), 4);
  EXPECT_EQ(logprob_rank(row, 0), 5);
  EXPECT_EQ(logprob_rank(row, 4), 6);
  double lse = 0;
  const TokenLogprob top = top_logprobs(row, 2, lse);
  ASSERT_EQ(top.top.size(), 2u);
  EXPECT_EQ(top.top[0].second, top.top[1].second);  // the two 3s
  EXPECT_NEAR(lse, std::log(std::exp(1.0) + 2 * std::exp(3.0) + 2 * std::exp(2.0) + std::exp(-1.0)), 1e-9);
}

TEST(Sampler, NanAndInfiniteLogitsGiveInRangeTokens) {
  for (const float temperature : {0.0f, 0.7f}) {
    for (const int32_t top_k : {0, 5}) {
      SamplingParams p;
      p.temperature = temperature;
      p.top_k = top_k;
      p.top_p = 0.9f;
      p.min_p = 0.05f;
      Sampler s(p, {});
      SCOPED_TRACE("temperature " + std::to_string(temperature) + " top_k " + std::to_string(top_k));
      std::vector<float> all_nan(50, NAN);
      EXPECT_EQ(s.sample(all_nan), 0);  // every logit −∞ after the NaNs: the first index
      std::vector<float> all_neg_inf(50, -INFINITY);
      EXPECT_EQ(s.sample(all_neg_inf), 0);
      auto with_inf = random_logits(50, 3);
      with_inf[17] = with_inf[31] = INFINITY;
      EXPECT_EQ(s.sample(with_inf), 17);  // the first +∞
      for (unsigned seed = 0; seed < 20; ++seed) {  // NaNs among finite logits are never drawn
        auto mixed = random_logits(50, seed);
        for (size_t i = 0; i < mixed.size(); i += 3) mixed[i] = NAN;
        const int32_t t = s.sample(mixed);
        ASSERT_TRUE(t >= 0 && t < 50 && t % 3 != 0) << t;
      }
    }
  }
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDiffers) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.9f;
  p.seed = 42;
  auto run = [&](uint64_t seed) {
    SamplingParams q = p;
    q.seed = seed;
    Sampler s(q, {});
    std::vector<int32_t> out;
    for (unsigned i = 0; i < 50; ++i) {
      auto l = random_logits(300, i);
      out.push_back(s.sample(l));
    }
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(Sampler, FrequenciesFollowSoftmaxAtTemperature) {
  // Four tokens with logits log(0.1), log(0.2), log(0.3), log(0.4): at temperature 1 the draw
  // frequencies must approach those probabilities (binomial 5-sigma bounds over 20000 draws).
  SamplingParams p;
  p.seed = 7;
  Sampler s(p, {});
  std::map<int32_t, int> counts;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = {std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f)};
    counts[s.sample(l)]++;
  }
  for (int t = 0; t < 4; ++t) {
    const double pr = 0.1 * (t + 1);
    EXPECT_NEAR(counts[t] / double(n), pr, 5 * std::sqrt(pr * (1 - pr) / n)) << "token " << t;
  }
}

TEST(Sampler, TopPKeepsSmallestPrefixReachingMass) {
  SamplingParams p;
  p.top_p = 0.5f;  // probabilities 0.4, 0.3, ...: keeps {3, 2}
  p.seed = 1;
  Sampler s(p, {});
  for (int i = 0; i < 500; ++i) {
    std::vector<float> l = {std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f)};
    const int32_t t = s.sample(l);
    EXPECT_TRUE(t == 3 || t == 2) << t;
  }
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  SamplingParams p;
  p.min_p = 0.6f;  // floor 0.6 * 0.4 = 0.24: keeps {3, 2}
  p.seed = 2;
  Sampler s(p, {});
  for (int i = 0; i < 500; ++i) {
    std::vector<float> l = {std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f)};
    const int32_t t = s.sample(l);
    EXPECT_TRUE(t == 3 || t == 2) << t;
  }
}

// vLLM V1's order: min-p first, then top-p over the tokens it keeps, renormalised. min_p 0.6 keeps
// {3, 2} (0.4, 0.3 → 0.571, 0.429), and top_p 0.5 then keeps token 3 alone; top-p first (over 0.4,
// 0.3, ...) would keep both.
TEST(Sampler, MinPComesBeforeTopP) {
  SamplingParams p;
  p.min_p = 0.6f;
  p.top_p = 0.5f;
  p.seed = 3;
  Sampler s(p, {});
  for (int i = 0; i < 200; ++i) {
    std::vector<float> l = {std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f)};
    EXPECT_EQ(s.sample(l), 3);
  }
  // With top-k too: top-k 3 keeps {3, 2, 1}, min-p 0.6 {3, 2}, and top_p 0.5 then {3} (0.571 of
  // their 0.7); the old order (top-k, top-p over the top-k's 0.444 / 0.333 / 0.222, then min-p)
  // kept {3, 2}.
  p.top_k = 3;
  Sampler s2(p, {});
  for (int i = 0; i < 200; ++i) {
    std::vector<float> l = {std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f)};
    EXPECT_EQ(s2.sample(l), 3);
  }
}

TEST(Sampler, PenaltiesAndBiasFollowTheirFormulas) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.repetition_penalty = 2.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  p.logit_bias = {{4, 1.0f}};
  const std::vector<int32_t> prompt = {0, 1};
  Sampler s(p, prompt);
  s.accept(1);
  s.accept(1);
  s.accept(2);
  std::vector<float> l = {4.0f, -2.0f, 3.0f, 0.5f, 0.0f};
  s.sample(l);
  EXPECT_FLOAT_EQ(l[0], 2.0f);                     // prompt token, positive: divided
  EXPECT_FLOAT_EQ(l[1], -4.0f - 0.5f - 0.5f);       // generated twice, negative: multiplied, then 0.5 + 2·0.25
  EXPECT_FLOAT_EQ(l[2], 1.5f - 0.5f - 0.25f);       // generated once
  EXPECT_FLOAT_EQ(l[3], 0.5f);                      // untouched
  EXPECT_FLOAT_EQ(l[4], 1.0f);                      // bias
}

TEST(Sampler, LogitBiasCanForceAToken) {
  SamplingParams p;
  p.logit_bias = {{3, 100.0f}};
  p.seed = 3;
  Sampler s(p, {});
  auto l = random_logits(50, 4);
  EXPECT_EQ(s.sample(l), 3);
}

// As vLLM: a bias past ±100 counts as ±100.
TEST(Sampler, LogitBiasIsClampedToAHundred) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.logit_bias = {{0, INFINITY}, {1, -1e30f}, {2, 99.5f}};
  Sampler s(p, {});
  std::vector<float> l = {1.0f, 2.0f, 3.0f, 4.0f};
  s.sample(l);
  EXPECT_FLOAT_EQ(l[0], 101.0f);
  EXPECT_FLOAT_EQ(l[1], -98.0f);
  EXPECT_FLOAT_EQ(l[2], 102.5f);
  EXPECT_FLOAT_EQ(l[3], 4.0f);
}

TEST(SamplingParams, ValidationNamesTheParameter) {
  auto expect_bad = [](auto mutate, const char* word) {
    SamplingParams p;
    mutate(p);
    try {
      p.validate(100);
      ADD_FAILURE() << "accepted bad " << word;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  expect_bad([](SamplingParams& p) { p.temperature = -1; }, "temperature");
  expect_bad([](SamplingParams& p) { p.temperature = NAN; }, "temperature");
  expect_bad([](SamplingParams& p) { p.top_p = 0; }, "top_p");
  expect_bad([](SamplingParams& p) { p.top_p = 1.5f; }, "top_p");
  expect_bad([](SamplingParams& p) { p.top_k = -2; }, "top_k");
  expect_bad([](SamplingParams& p) { p.min_p = 2; }, "min_p");
  expect_bad([](SamplingParams& p) { p.presence_penalty = 3; }, "presence_penalty");
  expect_bad([](SamplingParams& p) { p.frequency_penalty = -3; }, "frequency_penalty");
  expect_bad([](SamplingParams& p) { p.repetition_penalty = 0; }, "repetition_penalty");
  expect_bad([](SamplingParams& p) { p.logit_bias = {{100, 1.0f}}; }, "logit_bias");
  expect_bad([](SamplingParams& p) { p.logit_bias = {{1, NAN}}; }, "logit_bias");
  expect_bad([](SamplingParams& p) { p.repetition_penalty = INFINITY; }, "repetition_penalty");
  SamplingParams ok;
  EXPECT_NO_THROW(ok.validate(100));
  ok.repetition_penalty = 12.0f;  // vLLM bounds it only by > 0
  ok.logit_bias = {{1, 1000.0f}, {2, -INFINITY}};  // clamped when applied
  EXPECT_NO_THROW(ok.validate(100));
}

}  // namespace
}  // namespace sparseserve
