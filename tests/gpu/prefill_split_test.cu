// The paged prefill's key split (kernels/cuda/attention_plan.h plan_prefill_split) against the CPU
// twin: short chunks after long histories whose query tiles split along their keys into pieces, a
// merge folding their partials; every mask, both kernels, forced splits (min_split_keys down to 128,
// split_ctas above twice the tiles). Problems and checks: prefill_problem.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <climits>
#include <random>
#include <string>

#include "prefill_problem.h"

namespace sparseserve::kernels::cuda::prefill_test {
namespace {

// The key split (plan_prefill_split): short chunks after long histories, their tiles split along the
// keys into pieces whose partials a merge folds. Pieces start on key-tile multiples of the list (the
// Hopper kernel's gathered units included), the last one takes the new keys, and ragged lists make
// the plan's page estimate too high (pieces past the list, pieces no query sees a key of).
// Every mask; band rows with windows of up to a third of the history (their lists: sink and ring
// pages, which split too once they hold more than a piece's keys). At least one row is not a band
// row, so that some tile holds the whole history and splits.
PrefillProblem make_split_problem(std::mt19937& rng, int32_t D, int32_t P, int32_t group, int32_t max_history) {
  for (;;) {
    ProblemShape sh = shape(D, P, group, rand_int(rng, 1, 3), rand_int(rng, 1, 3), max_history, 100);
    sh.min_history = max_history / 3;
    sh.modes = {Mode::kCausal, Mode::kCausalNewKv, Mode::kBand, Mode::kBlocks};
    sh.block_choices = {16, 32, 48, 64, 128, 256};
    sh.ragged_history = rand_int(rng, 0, 1) == 1;
    sh.sink = rand_int(rng, 1, 3 * P);
    sh.local = rand_int(rng, 4 * P, std::max(4 * P, max_history / 3));
    PrefillProblem pr = make_problem(sh, rng);
    if (std::any_of(pr.rows.begin(), pr.rows.end(), [](const PrefillRow& r) { return r.mask != MaskKind::kBand; })) {
      return pr;
    }
  }
}

// CTAs for a split of pr: at least twice its query tiles, so that its longest tile splits whenever
// it holds more than min_split_keys keys (then pieces of half that tile fit).
int32_t split_ctas(const PrefillProblem& pr, std::mt19937& rng) {
  int32_t tiles = 0;
  for (const PrefillRow& r : pr.rows) tiles += (r.n_tokens * pr.group + kPrefillTileRows - 1) / kPrefillTileRows;
  return 2 * tiles + rand_int(rng, 0, 400);
}

TEST(PrefillAttentionGpu, SmallKeySplitOfShortChunksEveryMask) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(77);
  for (const int32_t D : {64, 128}) {
    for (const int32_t P : {16, 64}) {
      const PrefillProblem pr = make_split_problem(rng, D, P, 4, 900);
      const std::string what = "split D=" + std::to_string(D) + " P=" + std::to_string(P);
      EXPECT_GT(check_problem(pr, what, {.min_split_keys = 128, .split_ctas = split_ctas(pr, rng)}), 0u) << what;
    }
  }
}

// A row with new keys and a list with gaps, split into pieces of 128 keys: the plan's estimate (its
// pages before the chunk) exceeds the list, so its last pieces start past the list's end; the very
// last one sees only the new keys.
TEST(PrefillAttentionGpu, SmallKeySplitPiecesPastAGappyList) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(91);
  ProblemShape sh = shape(128, 64, 4, 1, 1, 900, 20);
  sh.min_history = 900;
  sh.min_chunk = 20;
  sh.modes = {Mode::kCausalNewKv};
  sh.ragged_history = true;  // at least one gap among the entries before the chunk
  const PrefillProblem pr = make_problem(sh, rng);
  const SplitConfig split{.min_split_keys = 128, .split_ctas = 1000};
  PrefillAttention attn({.head_dim = 128, .group = 4, .page_tokens = 64, .min_split_keys = split.min_split_keys,
                         .split_ctas = split.split_ctas});
  attn.plan(pr.rows);
  const auto entries = static_cast<int32_t>(pr.pages[0].ids.size());
  ASSERT_LT(entries, 900 / 64 + 1);
  ASSERT_EQ(attn.merges().size(), 1u);
  EXPECT_GE(attn.merges()[0].pieces, 3);
  const PrefillWorkItem& last = attn.work().back();
  EXPECT_EQ(last.page_end, INT32_MAX);
  EXPECT_GE(last.page_begin, entries) << "the last piece holds only the new keys";
  EXPECT_GT(check_problem(pr, "gappy list", split), 0u);
}

TEST(PrefillAttentionGpu, KeySplitMatchesCpuTwinOverShapes) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937 rng(static_cast<uint32_t>(seed));
  for (const int32_t D : {64, 128}) {
    for (const int32_t P : {16, 32, 64, 128}) {
      for (const int32_t group : {1, 3, 8}) {
        const PrefillProblem pr = make_split_problem(rng, D, P, group, 4000);
        const int32_t min_keys = std::array<int32_t, 3>{128, 256, 1024}[static_cast<size_t>(rand_int(rng, 0, 2))];
        const SplitConfig split{.min_split_keys = min_keys, .split_ctas = split_ctas(pr, rng)};
        const std::string what = "split D=" + std::to_string(D) + " P=" + std::to_string(P) + " group=" +
                                 std::to_string(group) + " min_keys=" + std::to_string(split.min_split_keys) +
                                 " ctas=" + std::to_string(split.split_ctas);
        EXPECT_GT(check_problem(pr, what, split), 0u) << what;
      }
    }
  }
}

}  // namespace
}  // namespace sparseserve::kernels::cuda::prefill_test
