// kernels/cpu/page_lists (the spec of the device-kept page lists) against entries written out by
// hand: store runs (every block of a lane, positions and lengths from the blocks and the row's end),
// staged runs (copied), page-only runs, and the runs it refuses.
#include "kernels/cpu/page_lists.h"

#include <gtest/gtest.h>

#include <vector>

#include "common/errors.h"

namespace sparseserve::kernels::cpu {
namespace {

TEST(PageListsTest, StoreRunsDeriveEntriesFromBlocks) {
  // Two block tables of 4 blocks at store offsets 0 and 4; P = 16.
  const std::vector<int32_t> store{7, 3, 9, 2, 40, 41, 42, 43};
  std::vector<int32_t> out(30, -1);
  const KeyRun runs[] = {
      {.count = 3, .src = 0, .first = 0, .end = 40, .pages_at = 0, .pos0_at = 10, .len_at = 20},  // 40 tokens
      {.count = 2, .src = 4, .first = 2, .end = 50, .pages_at = 3, .pos0_at = 13, .len_at = 23},  // blocks 2, 3
  };
  expand_key_runs(runs, store, {}, 16, out);
  EXPECT_EQ(std::vector<int32_t>(out.begin(), out.begin() + 6), (std::vector<int32_t>{7, 3, 9, 42, 43, -1}));
  EXPECT_EQ(std::vector<int32_t>(out.begin() + 10, out.begin() + 15), (std::vector<int32_t>{0, 16, 32, 32, 48}));
  EXPECT_EQ(std::vector<int32_t>(out.begin() + 20, out.begin() + 25), (std::vector<int32_t>{16, 16, 8, 16, 2}));
}

TEST(PageListsTest, StagedRunsCopyAndPageOnlyRunsWritePagesAlone) {
  // Staged entries: pages at 2.., positions src_step = 5 past them, lengths 10 past them.
  std::vector<int32_t> staged(20, 0);
  staged[2] = 11, staged[3] = 12;
  staged[7] = 0, staged[8] = 64;
  staged[12] = 64, staged[13] = 3;
  const std::vector<int32_t> store{5, 6, 7};
  std::vector<int32_t> out(12, -1);
  const KeyRun runs[] = {
      {.count = 2, .src = 2, .src_step = 5, .pages_at = 0, .pos0_at = 4, .len_at = 8},
      {.count = 2, .src = 0, .first = 1, .end = 150, .pages_at = 2},  // page ids only
  };
  expand_key_runs(runs, store, staged, 64, out);
  EXPECT_EQ(out, (std::vector<int32_t>{11, 12, 6, 7, 0, 64, -1, -1, 64, 3, -1, -1}));
}

TEST(PageListsTest, RefusesRunsOutsideTheirArrays) {
  const std::vector<int32_t> store{1, 2, 3, 4};
  const std::vector<int32_t> staged(8, 0);
  std::vector<int32_t> out(8, 0);
  const auto refuses = [&](KeyRun r) {
    EXPECT_THROW(expand_key_runs(std::span(&r, 1), store, staged, 16, out), InvalidArgument);
  };
  refuses({.count = 5, .src = 0, .end = 80, .pages_at = 0});              // past the store
  refuses({.count = 2, .src = 1, .first = 2, .end = 100, .pages_at = 0});  // src + first past it
  refuses({.count = 2, .src = 0, .end = 16, .pages_at = 0});               // block 1 starts at end
  refuses({.count = 2, .src = 0, .end = 40, .pages_at = 7});               // past out
  refuses({.count = 2, .src = 0, .end = 40, .pages_at = 0, .pos0_at = 7, .len_at = 0});
  refuses({.count = 2, .src = 6, .src_step = 1, .pages_at = 0, .pos0_at = 2, .len_at = 4});  // staged len past 8
  refuses({.count = -1, .src = 0, .end = 40});
  const std::vector<int32_t> odd{1, 2, 3};
  EXPECT_THROW(scatter_pairs(odd, out), InvalidArgument);
  const std::vector<int32_t> outside{8, 1};
  EXPECT_THROW(scatter_pairs(outside, out), InvalidArgument);
  const std::vector<int32_t> pairs{0, 5, 7, 9};
  scatter_pairs(pairs, out);
  EXPECT_EQ(out[0], 5);
  EXPECT_EQ(out[7], 9);
}

}  // namespace
}  // namespace sparseserve::kernels::cpu
