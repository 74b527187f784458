// kernels/cuda/sampling vs the CPU twin's rules (engine/sampler.cc):
//  - argmax: exact, first index of the maximum (ties included);
//  - stochastic: every sampled token lies in the allowed set the CPU rules give (min-p, top-k, then
//    top-p over what is left, over the tokens ranked by logit, ties by lower id), and the frequencies over many seeds
//    match the renormalised probabilities (chi-square bound). allowed_set below restates the rules
//    for the test; it is itself checked against the real Sampler's draws.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <numeric>

#include "engine/sampler.h"
#include "kernels/cuda/sampling.h"
#include "ops_test_util.h"

namespace sparseserve::gpu_test {
namespace {

namespace cuda = kernels::cuda;

struct Allowed {
  std::vector<int32_t> ids;   // in rank order
  std::vector<double> probs;  // renormalised over ids
  double margin = INFINITY;   // distance of the top-p / min-p thresholds to the nearest decision
  bool contains(int32_t t) const { return std::find(ids.begin(), ids.end(), t) != ids.end(); }
};

Allowed allowed_set(std::span<const float> logits, const cuda::SamplingRow& p) {
  const auto V = int32_t(logits.size());
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
  });
  Allowed out;
  if (p.temperature == 0.0f || p.top_k == 1) {
    out.ids = {order[0]};
    out.probs = {1.0};
    return out;
  }
  const int32_t k = p.top_k > 0 ? std::min(p.top_k, V) : V;
  std::vector<double> pr(static_cast<size_t>(k));
  double sum = 0.0;
  for (int32_t i = 0; i < k; ++i) {
    pr[size_t(i)] = std::exp((double(logits[size_t(order[size_t(i)])]) - logits[size_t(order[0])]) / p.temperature);
    sum += pr[size_t(i)];
  }
  for (double& x : pr) x /= sum;
  int32_t n = k;
  if (p.min_p > 0.0f) {  // before top-p (vLLM V1)
    const double floor = p.min_p * pr[0];
    int32_t m = 1;
    while (m < n && pr[size_t(m)] >= floor) ++m;
    if (m < n) out.margin = std::min(out.margin, std::fabs(pr[size_t(m)] - floor) / pr[0]);
    if (m > 1) out.margin = std::min(out.margin, std::fabs(pr[size_t(m - 1)] - floor) / pr[0]);
    n = m;
  }
  double mass = 0.0;
  for (int32_t i = 0; i < n; ++i) mass += pr[size_t(i)];
  if (p.top_p < 1.0f) {  // over the tokens left, renormalised
    double cum = 0.0;
    for (int32_t i = 0; i < n; ++i) {
      const double before = cum / mass;
      cum += pr[size_t(i)];
      out.margin = std::min(out.margin, std::fabs(cum / mass - p.top_p));
      if (cum / mass >= p.top_p) {
        n = i + 1;
        out.margin = std::min(out.margin, std::fabs(p.top_p - before));
        mass = cum;
        break;
      }
    }
  }
  for (int32_t i = 0; i < n; ++i) {
    out.ids.push_back(order[size_t(i)]);
    out.probs.push_back(pr[size_t(i)] / mass);
  }
  return out;
}

// Pearson chi-square of counts (keyed by token) against allowed.probs over `draws`; bins with an
// expected count < 5 are merged. Returns {statistic, degrees of freedom}.
std::pair<double, int> chi_square(const std::map<int32_t, int64_t>& counts, const Allowed& a, int64_t draws) {
  double stat = 0.0, small_e = 0.0, small_o = 0.0;
  int bins = 0;
  for (size_t i = 0; i < a.ids.size(); ++i) {
    const double e = a.probs[i] * double(draws);
    const auto it = counts.find(a.ids[i]);
    const double o = it == counts.end() ? 0.0 : double(it->second);
    if (e < 5.0) {
      small_e += e;
      small_o += o;
      continue;
    }
    stat += (o - e) * (o - e) / e;
    ++bins;
  }
  if (small_e > 0.0) {
    stat += (small_o - small_e) * (small_o - small_e) / std::max(small_e, 1e-9);
    ++bins;
  }
  return {stat, std::max(bins - 1, 1)};
}

// ~6 standard deviations above the chi-square mean: fails only on a real distribution error.
double chi_square_bound(int df) { return df + 6.0 * std::sqrt(2.0 * df) + 6.0; }

std::vector<float> random_logits(size_t n, std::mt19937_64& rng, float scale, bool quantized) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = quantized ? std::round(normal(rng) * 2.0f) * 0.5f : normal(rng);
  return x;
}

std::vector<int32_t> sample(const std::vector<float>& logits, int64_t ld, int32_t rows, int32_t vocab,
                            const std::vector<cuda::SamplingRow>& params) {
  auto dlogits = to_device<float>(logits);
  auto dparams = to_device<cuda::SamplingRow>(params);
  auto dtokens = poisoned<int32_t>(size_t(rows));
  cuda::sample_rows(dlogits.data(), ld, rows, vocab, dparams.data(), dtokens.data(), nullptr);
  return dtokens.download();
}

// NaN logits count as −∞, and a row whose largest logit is not finite takes the greedy token, on
// the GPU as in the CPU twin (Sampler): every token is in range, never a NaN's.
TEST(SamplingTest, SmallNanAndInfiniteLogitsMatchCpuTwin) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(5);
  const int32_t vocab = 1000;
  std::vector<std::vector<float>> rows;
  rows.push_back(std::vector<float>(vocab, NAN));
  rows.push_back(std::vector<float>(vocab, -INFINITY));
  rows.push_back(random_logits(vocab, rng, 3.0f, false));
  rows.back()[417] = rows.back()[631] = INFINITY;
  for (int i = 0; i < 8; ++i) {  // finite rows with a NaN at every third id
    rows.push_back(random_logits(vocab, rng, 3.0f, false));
    for (size_t j = 0; j < rows.back().size(); j += 3) rows.back()[j] = NAN;
  }
  const auto n = static_cast<int32_t>(rows.size());
  std::vector<float> logits;
  for (const auto& r : rows) logits.insert(logits.end(), r.begin(), r.end());
  const std::vector<cuda::SamplingRow> kinds = {
      {.temperature = 0.0f}, {.temperature = 0.8f}, {.temperature = 0.8f, .top_k = 5, .top_p = 0.9f, .min_p = 0.05f}};
  for (const cuda::SamplingRow& kind : kinds) {
    SCOPED_TRACE("temperature " + std::to_string(kind.temperature) + " top_k " + std::to_string(kind.top_k));
    std::vector<cuda::SamplingRow> params(static_cast<size_t>(n), kind);
    for (int32_t r = 0; r < n; ++r) params[size_t(r)].seed = uint64_t(r);
    const std::vector<int32_t> got = sample(logits, vocab, n, vocab, params);
    SamplingParams sp;
    sp.temperature = kind.temperature;
    sp.top_k = kind.top_k;
    sp.top_p = kind.top_p;
    sp.min_p = kind.min_p;
    for (int32_t r = 0; r < n; ++r) {
      std::vector<float> row = rows[size_t(r)];
      const int32_t cpu = Sampler(sp, {}).sample(row);
      const int32_t t = got[size_t(r)];
      ASSERT_TRUE(t >= 0 && t < vocab) << "row " << r << ": " << t;
      if (r < 3 || kind.temperature == 0.0f) {
        EXPECT_EQ(t, cpu) << "row " << r;  // greedy: the same token
      } else {
        EXPECT_NE(t % 3, 0) << "row " << r << " drew a NaN's id " << t;
      }
    }
    EXPECT_EQ(got[0], 0);
    EXPECT_EQ(got[1], 0);
    EXPECT_EQ(got[2], 417);
  }
}

TEST(SamplingTest, SmallArgmaxMatchesCpuExactly) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (const int32_t vocab : {1, 7, 1000, 32000, 128256}) {
    for (const int32_t rows : {1, 3, 64}) {
      for (const bool quantized : {false, true}) {
        SCOPED_TRACE("vocab " + std::to_string(vocab) + " rows " + std::to_string(rows) +
                     (quantized ? " with ties" : ""));
        const int64_t ld = vocab + (rows % 2) * 5;
        const std::vector<float> logits = random_logits(size_t(rows * ld), rng, 3.0f, quantized);
        auto dlogits = to_device<float>(logits);
        auto dtokens = poisoned<int32_t>(size_t(rows));
        cuda::argmax_rows(dlogits.data(), ld, rows, vocab, dtokens.data(), nullptr);
        const std::vector<int32_t> got = dtokens.download();
        // Greedy through sample_rows: temperature 0, or top_k 1.
        std::vector<cuda::SamplingRow> params(static_cast<size_t>(rows));
        for (int32_t r = 0; r < rows; ++r) {
          params[size_t(r)].temperature = r % 2 ? 0.0f : 0.7f;
          params[size_t(r)].top_k = r % 2 ? 0 : 1;
        }
        const std::vector<int32_t> greedy = sample(logits, ld, rows, vocab, params);
        for (int32_t r = 0; r < rows; ++r) {
          const auto* row = logits.data() + r * ld;
          const auto want = int32_t(std::max_element(row, row + vocab) - row);
          ASSERT_EQ(got[size_t(r)], want) << "row " << r;
          ASSERT_EQ(greedy[size_t(r)], want) << "row " << r;
        }
      }
    }
  }
}

const cuda::SamplingRow kParamSets[] = {
    {.temperature = 1.0f},
    {.temperature = 1.0f, .top_k = 50},
    {.temperature = 0.7f, .top_p = 0.9f},
    {.temperature = 1.3f, .top_k = 200, .top_p = 0.8f, .min_p = 0.05f},
    {.temperature = 0.5f, .min_p = 0.1f},
    {.temperature = 2.0f, .top_k = 5},
    {.temperature = 0.9f, .top_k = 1000, .top_p = 0.95f},
};

TEST(SamplingTest, LargeVocabSamplesStayInAllowedSet) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int32_t vocab = 128256, rows = 28;
  const int64_t ld = vocab;
  std::vector<float> logits;
  std::vector<cuda::SamplingRow> params;
  std::vector<Allowed> allowed;
  for (int32_t r = 0; r < rows; ++r) {
    std::vector<float> row;
    cuda::SamplingRow p = kParamSets[size_t(r) % std::size(kParamSets)];
    p.seed = rng();
    // Redraw the rare rows whose top-p / min-p threshold falls within rounding of a decision (the
    // GPU's weights carry ~1e-7 relative error; near the boundary tokens are ~1e-5 of the mass).
    do {
      row = random_logits(size_t(vocab), rng, 2.5f, /*quantized=*/r % 4 == 3);
    } while (allowed_set(row, p).margin < 2e-6);
    allowed.push_back(allowed_set(row, p));
    logits.insert(logits.end(), row.begin(), row.end());
    params.push_back(p);
  }
  for (uint64_t step = 0; step < 8; ++step) {
    for (auto& p : params) p.step = step;
    const std::vector<int32_t> got = sample(logits, ld, rows, vocab, params);
    for (int32_t r = 0; r < rows; ++r) {
      ASSERT_TRUE(allowed[size_t(r)].contains(got[size_t(r)]))
          << "row " << r << " step " << step << ": token " << got[size_t(r)] << " outside the allowed set of "
          << allowed[size_t(r)].ids.size();
    }
  }
}

TEST(SamplingTest, SmallTiedTopKKeepsLowerIds) {
  SKIP_WITHOUT_GPU();
  // 10 tokens tied at the top-k boundary: top_k = 4 must keep the 4 lowest ids among them.
  const int32_t vocab = 300;
  std::vector<float> logits(size_t(vocab), -5.0f);
  for (int32_t i = 100; i < 300; i += 20) logits[size_t(i)] = 1.0f;
  const int32_t rows = 2000;
  std::vector<float> all;
  std::vector<cuda::SamplingRow> params;
  for (int32_t r = 0; r < rows; ++r) {
    all.insert(all.end(), logits.begin(), logits.end());
    params.push_back({.temperature = 1.0f, .top_k = 4, .seed = uint64_t(r)});
  }
  const std::vector<int32_t> got = sample(all, vocab, rows, vocab, params);
  std::map<int32_t, int64_t> counts;
  for (int32_t t : got) counts[t] += 1;
  const Allowed a = allowed_set(logits, params[0]);
  ASSERT_EQ(a.ids, (std::vector<int32_t>{100, 120, 140, 160}));
  for (const auto& [t, n] : counts) EXPECT_TRUE(a.contains(t)) << "token " << t << " drawn " << n << " times";
  const auto [stat, df] = chi_square(counts, a, rows);
  EXPECT_LE(stat, chi_square_bound(df));
}

// Draws `draws` tokens for one logits row: on the GPU (one row per seed) and with the CPU Sampler.
TEST(SamplingTest, FrequenciesMatchProbabilities) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int32_t vocab = 64, draws = 20000;
  const cuda::SamplingRow cases[] = {
      {.temperature = 1.0f},
      {.temperature = 0.8f, .top_k = 20, .top_p = 0.9f, .min_p = 0.02f},
      {.temperature = 1.5f, .top_p = 0.7f},
      {.temperature = 0.6f, .top_k = 8},
  };
  for (const cuda::SamplingRow& base : cases) {
    SCOPED_TRACE("temperature " + std::to_string(base.temperature) + " top_k " + std::to_string(base.top_k) +
                 " top_p " + std::to_string(base.top_p) + " min_p " + std::to_string(base.min_p));
    std::vector<float> logits;
    do {
      logits = random_logits(size_t(vocab), rng, 1.5f, false);
    } while (allowed_set(logits, base).margin < 1e-3);
    const Allowed a = allowed_set(logits, base);

    std::vector<float> all;
    std::vector<cuda::SamplingRow> params;
    const uint64_t seed0 = rng();
    for (int32_t r = 0; r < draws; ++r) {
      all.insert(all.end(), logits.begin(), logits.end());
      cuda::SamplingRow p = base;
      p.seed = seed0 + uint64_t(r);
      p.step = 3;
      params.push_back(p);
    }
    std::map<int32_t, int64_t> gpu_counts;
    for (int32_t t : sample(all, vocab, draws, vocab, params)) gpu_counts[t] += 1;
    for (const auto& [t, n] : gpu_counts) ASSERT_TRUE(a.contains(t)) << "GPU drew token " << t << " outside the set";
    const auto [gpu_stat, gpu_df] = chi_square(gpu_counts, a, draws);
    EXPECT_LE(gpu_stat, chi_square_bound(gpu_df)) << "GPU frequencies";

    // The reference set and probabilities are the CPU Sampler's.
    SamplingParams sp;
    sp.temperature = base.temperature;
    sp.top_k = base.top_k;
    sp.top_p = base.top_p;
    sp.min_p = base.min_p;
    std::map<int32_t, int64_t> cpu_counts;
    for (int32_t r = 0; r < draws; ++r) {
      sp.seed = seed0 + uint64_t(r);
      Sampler sampler(sp, {});
      std::vector<float> l = logits;
      cpu_counts[sampler.sample(l)] += 1;
    }
    for (const auto& [t, n] : cpu_counts) ASSERT_TRUE(a.contains(t)) << "CPU drew token " << t << " outside the set";
    const auto [cpu_stat, cpu_df] = chi_square(cpu_counts, a, draws);
    EXPECT_LE(cpu_stat, chi_square_bound(cpu_df)) << "CPU Sampler frequencies (the test's reference)";
  }
}

TEST(SamplingTest, SmallSameSeedAndStepSameToken) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(5);
  const int32_t vocab = 5000, rows = 64;
  const std::vector<float> row = random_logits(size_t(vocab), rng, 1.0f, false);
  std::vector<float> logits;
  std::vector<cuda::SamplingRow> params;
  for (int32_t r = 0; r < rows; ++r) {
    logits.insert(logits.end(), row.begin(), row.end());
    // Rows 2i and 2i+1 share (seed, step); the step changes every 8 rows.
    params.push_back({.temperature = 1.0f, .top_p = 0.95f, .seed = uint64_t(r / 2), .step = uint64_t(r / 8)});
  }
  const std::vector<int32_t> a = sample(logits, vocab, rows, vocab, params);
  const std::vector<int32_t> b = sample(logits, vocab, rows, vocab, params);
  EXPECT_EQ(a, b);
  for (int32_t r = 0; r < rows; r += 2) EXPECT_EQ(a[size_t(r)], a[size_t(r) + 1]) << "row " << r;
  // Same seed, other steps: not all the same token (flat-ish distribution over thousands of tokens).
  for (auto& p : params) p.seed = 42;
  const std::vector<int32_t> c = sample(logits, vocab, rows, vocab, params);
  EXPECT_GT(std::set<int32_t>(c.begin(), c.end()).size(), 2u);
}

TEST(SamplingTest, ShapeCheckNamesCaller) {
  try {
    cuda::argmax_rows(nullptr, 10, 1, 20, nullptr, nullptr);  // ld < vocab
    FAIL() << "no exception";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("sampling_test.cu"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sparseserve::gpu_test
