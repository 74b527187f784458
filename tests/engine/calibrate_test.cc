// Head calibration on the real default model (skipped when it is absent), against simpler
// computations:
//  - a head's ablation score (HeadAblation) equals the answer NLL difference between two
//    independent full forwards: the paged backend with a profile in which only that head streams,
//    and the dense backend;
//  - gates are the scores normalized by the largest.
#include "engine/calibrate.h"

#include <gtest/gtest.h>

#include "tests/engine/default_model_fixture.h"

#include <algorithm>
#include <cmath>

#include "common/errors.h"
#include "engine/cpu_forward.h"
#include "engine/dense_kv.h"
#include "engine/head_ablation.h"
#include "engine/paged_kv.h"
#include "kvcache/kv_cache_manager.h"

namespace sparseserve {
namespace {

using CalibrateTest = DefaultModelTest;

CalibrationOptions small_ablation() {
  CalibrationOptions o;
  o.method = CalibrationMethod::kAblation;
  o.prompts = 1;
  o.context_tokens = 384;
  o.window = {16, 64};
  o.seed = 3;
  return o;
}

// Σ −log softmax(row)[target] over the answer rows; logits hold rows first_logit_row .. end.
double answer_nll(const std::vector<float>& logits, const CalibrationPrompt& p, int64_t first_logit_row, int64_t vocab) {
  double nll = 0;
  for (int64_t t = p.first_row; t <= p.last_row; ++t) {
    const float* row = logits.data() + (t - first_logit_row) * vocab;
    const double mx = *std::max_element(row, row + vocab);
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - mx);
    nll += mx + std::log(sum) - row[p.ids[static_cast<size_t>(t + 1)]];
  }
  return nll;
}

TEST_F(CalibrateTest, AblationScoreIsThePagedNllIncrease) {
  const ModelConfig& c = model_->config;
  const CalibrationOptions opts = small_ablation();
  const CalibrationPrompt p = calibration_prompts(*model_, opts)[0];
  const auto n = static_cast<int64_t>(p.ids.size());
  HeadAblation ablation(*model_, p, opts.window);
  CpuForward fwd(*model_);

  // Answer NLL of a full prefill in chunks of 100 (the ring wraps between and inside them); the
  // last chunk holds every answer row.
  ASSERT_GE(p.first_row, n - 100);
  const auto full_nll = [&](KvBackend& kv, kvcache::KvCacheManager* mgr) {
    std::vector<float> logits;
    for (int64_t off = 0; off < n; off += 100) {
      const int64_t len = std::min<int64_t>(100, n - off);
      if (mgr) mgr->allocate(1, off + len);
      const bool last = off + len == n;
      const ForwardSeq chunk{1, off, std::span(p.ids).subspan(static_cast<size_t>(off), static_cast<size_t>(len)),
                             last, n, !last};
      fwd.forward(std::span(&chunk, 1), kv, logits);
    }
    return answer_nll(logits, p, 100 * ((n - 1) / 100), c.vocab_size);
  };
  DenseKvBackend dense(c);
  dense.add_sequence(1);
  const double dense_nll = full_nll(dense, nullptr);
  EXPECT_NEAR(ablation.dense_nll(), dense_nll, 1e-4 * (1 + dense_nll));

  double largest = 0;
  for (const auto& [layer, head] : std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {0, 1}, {0, 2}, {11, 1}, {29, 2}}) {
    std::vector<kvcache::HeadRole> roles(static_cast<size_t>(c.n_layers * c.n_kv_heads), kvcache::HeadRole::kRetrieval);
    roles[static_cast<size_t>(layer * c.n_kv_heads + head)] = kvcache::HeadRole::kStreaming;
    kvcache::SparsityProfile prof =
        kvcache::SparsityProfile::dense(static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads));
    prof.name = "one-head-streams";
    prof.roles = kvcache::HeadRoles(static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads), roles);
    prof.streaming = opts.window;
    kvcache::KvCacheManager mgr(kvcache::KvCacheConfig{64, 16}, 4096);
    mgr.add_sequence(1, kvcache::SequenceLayout::from_roles(prof.roles, prof.streaming));
    PagedKvBackend paged(c, mgr);
    paged.add_sequence(1, prof);
    const double want = full_nll(paged, &mgr) - dense_nll;
    const double got = ablation.streaming_nll(layer, head) - ablation.dense_nll();
    EXPECT_NEAR(got, want, 2e-4 + 1e-3 * std::abs(want)) << "layer " << layer << " head " << head;
    largest = std::max(largest, std::abs(want));
  }
  EXPECT_GT(largest, 0.05);  // some chosen head matters at this window, so the check has teeth
  EXPECT_THROW(ablation.streaming_nll(c.n_layers, 0), InvalidArgument);
  EXPECT_THROW(ablation.streaming_nll(0, c.n_kv_heads), InvalidArgument);
}

TEST_F(CalibrateTest, GatesAreNormalizedScores) {
  CalibrationOptions opts = small_ablation();
  opts.method = CalibrationMethod::kOutputChange;
  const std::vector<double> score = score_heads(*model_, opts);
  const kvcache::HeadGates g = calibrate_heads(*model_, opts);
  const double mx = *std::max_element(score.begin(), score.end());
  ASSERT_GT(mx, 0);
  ASSERT_EQ(g.values.size(), score.size());
  for (size_t i = 0; i < score.size(); ++i) {
    EXPECT_FLOAT_EQ(g.values[i], static_cast<float>(std::clamp(score[i] / mx, 0.0, 1.0))) << i;
  }
  opts.window.local_tokens = 0;
  EXPECT_THROW(score_heads(*model_, opts), InvalidArgument);
  // A band as long as the prompt is dense attention: nothing to score.
  opts.window.local_tokens = opts.context_tokens - opts.window.sink_tokens;
  EXPECT_THROW(score_heads(*model_, opts), InvalidArgument);
  EXPECT_THROW(calibrate_heads(*model_, opts), InvalidArgument);
}

TEST(GatesFromScores, NormaliseByTheLargestAndRefuseScoresThatRankNothing) {
  const kvcache::HeadGates g = gates_from_scores({0.5, -0.25, 2.0, 1.0, 0.0, 4.0}, 2, 3);
  EXPECT_EQ(g.n_layers, 2);
  EXPECT_EQ(g.n_kv_heads, 3);
  EXPECT_EQ(g.values, (std::vector<float>{0.125f, 0.0f, 0.5f, 0.25f, 0.0f, 1.0f}));
  // Streaming changed nothing for any head: no ranking, no pattern.
  EXPECT_THROW(gates_from_scores({0.0, 0.0, 0.0, 0.0}, 2, 2), Error);
  EXPECT_THROW(gates_from_scores({-1.0, -0.5, 0.0, -2.0}, 2, 2), Error);
  EXPECT_THROW(gates_from_scores({std::nan(""), 1.0, 2.0, 3.0}, 2, 2), Error);
  EXPECT_THROW(gates_from_scores({1.0, std::nan(""), 2.0, 3.0}, 2, 2), Error);  // max_element skips it there
  EXPECT_THROW(gates_from_scores({1.0, 2.0, INFINITY, 3.0}, 2, 2), Error);
  EXPECT_THROW(gates_from_scores({1.0, 2.0, 3.0}, 2, 2), InvalidArgument);
  EXPECT_THROW(gates_from_scores({}, 0, 0), InvalidArgument);
}

}  // namespace
}  // namespace sparseserve
