// The attention kernels' host-side plans (kernels/cuda/attention_plan.h): decode's split-KV pieces
// and prefill's query tiles. Pure host code: runs everywhere, CI without a GPU included.
#include "kernels/cuda/attention_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <random>
#include <vector>

namespace sparseserve::kernels::cuda {
namespace {

int rand_int(std::mt19937& rng, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

TEST(DecodeSplitPlan, CoversEveryPageOnceAndRespectsCapacity) {
  std::mt19937 rng(7);
  for (int iter = 0; iter < 200; ++iter) {
    const int rows = rand_int(rng, 0, 40);
    std::vector<int32_t> pages(static_cast<size_t>(rows));
    for (int32_t& p : pages) p = rand_int(rng, 0, 3000);
    const int32_t target = rand_int(rng, 1, 300), max_work = rows + target;
    const DecodeSplit s = plan_decode_split(pages, 16, target, max_work, rand_int(rng, 1, 512));
    ASSERT_LE(static_cast<int32_t>(s.work.size()), max_work);
    ASSERT_EQ(s.row_splits.size(), pages.size());
    int32_t partials = 0;
    size_t w = 0;
    for (int r = 0; r < rows; ++r) {
      const int32_t n = s.row_splits[static_cast<size_t>(r)];
      ASSERT_GE(n, 1);
      int32_t expect_begin = 0;
      for (int32_t i = 0; i < n; ++i, ++w) {
        const DecodeWorkItem& it = s.work[w];
        EXPECT_EQ(it.row, r);
        EXPECT_EQ(it.page_begin, expect_begin);
        if (i + 1 == n) {
          EXPECT_EQ(it.page_end, INT32_MAX);  // the last piece takes the rest
        } else {
          EXPECT_EQ(it.page_end - it.page_begin, s.chunk_pages);
        }
        EXPECT_EQ(it.partial, n > 1 ? s.row_partial0[static_cast<size_t>(r)] + i : -1);
        expect_begin = it.page_end;
      }
      if (n > 1) {
        EXPECT_LT(int64_t{n - 1} * s.chunk_pages, pages[static_cast<size_t>(r)]);
        partials += n;
      }
    }
    EXPECT_EQ(w, s.work.size());
    EXPECT_EQ(partials, s.num_partials);
  }
}

TEST(DecodeSplitPlan, SplitsLongRowsOfSmallBatches) {
  const std::vector<int32_t> pages(8, 2048);  // batch 1, 8 KV heads, 128K tokens in 64-token pages
  const DecodeSplit s = plan_decode_split(pages, 64, 264, 8 + 264, 256);
  EXPECT_GE(s.work.size(), 200u);
  EXPECT_LE(s.work.size(), 272u);
  const std::vector<int32_t> many(512, 128);  // many rows: no split
  EXPECT_EQ(plan_decode_split(many, 64, 264, 512 + 264, 256).work.size(), 512u);
}

TEST(PrefillTilePlan, CoversEveryTileOnceLongestFirst) {
  std::vector<PrefillRow> rows(3);
  rows[0].n_tokens = 100;
  rows[0].q_pos0 = 0;
  rows[1].n_tokens = 10;
  rows[1].q_pos0 = 5000;
  rows[2].n_tokens = 300;
  rows[2].q_pos0 = 4000;
  rows[2].mask = MaskKind::kBand;
  rows[2].sink = 4;
  rows[2].local = 16;
  const auto work = plan_prefill_tiles(rows, 3);
  // Tiles are equal runs of packed rows (token × head of the group) starting at 0.
  ASSERT_FALSE(work.empty());
  int32_t tile = INT32_MAX;
  for (const PrefillWorkItem& w : work) {
    if (w.m0 > 0) tile = std::min(tile, w.m0);
  }
  ASSERT_GE(tile, 16);
  const int32_t packed[3] = {300, 30, 900};
  std::vector<std::vector<int32_t>> starts(3);
  for (const PrefillWorkItem& w : work) starts[static_cast<size_t>(w.row)].push_back(w.m0);
  for (size_t r = 0; r < 3; ++r) {
    std::sort(starts[r].begin(), starts[r].end());
    ASSERT_EQ(static_cast<int32_t>(starts[r].size()), (packed[r] + tile - 1) / tile) << "row " << r;
    for (size_t i = 0; i < starts[r].size(); ++i) EXPECT_EQ(starts[r][i], static_cast<int32_t>(i) * tile);
  }
  EXPECT_EQ(work.front().row, 1);  // the tile after 5000 tokens of history first
  EXPECT_TRUE(plan_prefill_tiles({}, 4).empty());
}

// The prefill's key split: every tile of plan_prefill_tiles appears once, whole or as pieces that
// tile its list entries from 0 to the end (the last piece open-ended, new keys with it), pieces
// start on multiples of kPrefillSplitKeys keys and hold min_split_keys keys at least, they fit in
// target_ctas, partial slots are consecutive per tile and distinct.
TEST(PrefillSplitPlan, PiecesCoverEachTileAndFitTheTarget) {
  std::mt19937 rng(5);
  int split_plans = 0, multi_wave_plans = 0;
  for (int iter = 0; iter < 300; ++iter) {
    const int32_t group = rand_int(rng, 1, 8), P = 16 << rand_int(rng, 0, 3);
    std::vector<PrefillRow> rows(static_cast<size_t>(rand_int(rng, 0, 12)));
    for (PrefillRow& r : rows) {
      r.n_tokens = rand_int(rng, 1, 300);
      r.q_pos0 = rand_int(rng, 0, 20000);
      r.new_kv = rand_int(rng, 0, 1);
      r.mask = static_cast<MaskKind>(rand_int(rng, 0, 2));
      r.sink = 64;
      r.local = 1024;
    }
    const int32_t target = rand_int(rng, 1, 400), min_keys = rand_int(rng, 0, 3000);
    const PrefillSplit s = plan_prefill_split(rows, group, P, target, min_keys);
    const std::vector<PrefillWorkItem> tiles = plan_prefill_tiles(rows, group);
    if (!s.merge.empty()) {
      ++split_plans;
      EXPECT_GT(min_keys, 0);
      // Below a wave of tiles, one wave of pieces; else fewer than kPrefillSplitWaves waves of tiles
      // in pieces over at most that many.
      const bool one_wave = tiles.size() < static_cast<size_t>(target);
      multi_wave_plans += one_wave ? 0 : 1;
      EXPECT_LT(tiles.size(), static_cast<size_t>(target) * kPrefillSplitWaves);
      EXPECT_LE(s.work.size(), static_cast<size_t>(target) * (one_wave ? 1 : kPrefillSplitWaves));
      EXPECT_LE(s.work.size(), static_cast<size_t>(kPrefillSplitMaxPieces));
      EXPECT_GE(int64_t{s.chunk_pages} * P, std::max(min_keys, kPrefillSplitKeys));
      EXPECT_EQ(int64_t{s.chunk_pages} * P % kPrefillSplitKeys, 0);
    } else {
      EXPECT_EQ(s.work.size(), tiles.size());
    }
    // Walk the work in order: whole tiles, or a merge item's pieces together.
    size_t w = 0, t = 0, m = 0;
    int32_t partials = 0;
    for (; w < s.work.size(); ++t) {
      ASSERT_LT(t, tiles.size());
      const PrefillWorkItem& it = s.work[w];
      EXPECT_EQ(it.row, tiles[t].row);
      EXPECT_EQ(it.m0, tiles[t].m0);
      if (it.partial < 0) {
        EXPECT_EQ(it.page_begin, 0);
        EXPECT_EQ(it.page_end, INT32_MAX);
        ++w;
        continue;
      }
      ASSERT_LT(m, s.merge.size());
      const PrefillMergeItem& mi = s.merge[m++];
      EXPECT_EQ(mi.row, it.row);
      EXPECT_EQ(mi.m0, it.m0);
      EXPECT_EQ(mi.partial0, partials);
      EXPECT_GE(mi.pieces, 2);
      for (int32_t i = 0; i < mi.pieces; ++i, ++w) {
        ASSERT_LT(w, s.work.size());
        const PrefillWorkItem& pc = s.work[w];
        EXPECT_EQ(pc.row, mi.row);
        EXPECT_EQ(pc.m0, mi.m0);
        EXPECT_EQ(pc.partial, mi.partial0 + i);
        EXPECT_EQ(pc.page_begin, i * s.chunk_pages);
        EXPECT_EQ(pc.page_end, i + 1 == mi.pieces ? INT32_MAX : (i + 1) * s.chunk_pages);
      }
      partials += mi.pieces;
    }
    EXPECT_EQ(t, tiles.size());
    EXPECT_EQ(m, s.merge.size());
    EXPECT_EQ(partials, s.num_partials);
  }
  EXPECT_GT(split_plans, 30);
  EXPECT_GT(multi_wave_plans, 5);
}

// A 64-token chunk after 7936 cached tokens (Llama-3-8B: 8 KV heads, group 4): 16 tiles fill an
// eighth of the H200's 132 SMs, so each splits into pieces of 1024 keys; streaming rows split their
// window (its pages are all their list holds), not the history; a whole prompt's tiles (a wave or
// more) do not split, nor anything with min_split_keys 0.
TEST(PrefillSplitPlan, AShortChunkOverALongHistorySplitsAWholePromptDoesNot) {
  std::vector<PrefillRow> rows(8);
  for (int32_t h = 0; h < 8; ++h) {
    rows[static_cast<size_t>(h)].kv_head = h;
    rows[static_cast<size_t>(h)].n_tokens = 64;
    rows[static_cast<size_t>(h)].q_pos0 = 7936;
  }
  // Every one of the 16 tiles split into `pieces` pieces of 16 entries (1024 keys).
  const auto expect_pieces = [&](size_t pieces) {
    const PrefillSplit s = plan_prefill_split(rows, 4, 64, 132, 1024);
    EXPECT_EQ(s.merge.size(), 16u);
    EXPECT_EQ(s.chunk_pages, 16);
    EXPECT_EQ(s.work.size(), 16u * pieces);
  };
  expect_pieces(8);  // 1024 keys: 8 pieces of 16 tiles fit in 132
  EXPECT_TRUE(plan_prefill_split(rows, 4, 64, 132, 0).merge.empty());
  for (PrefillRow& r : rows) {
    r.mask = MaskKind::kBand;
    r.sink = 128;
    r.local = 4096;
    r.new_kv = 1;
  }
  expect_pieces(5);  // sink + window + the tile's span, rounded out: at most 69 pages
  for (PrefillRow& r : rows) r.local = 256;  // a window under two pieces' keys: whole
  EXPECT_TRUE(plan_prefill_split(rows, 4, 64, 132, 1024).merge.empty());
  for (PrefillRow& r : rows) {
    r.mask = MaskKind::kCausal;
    r.n_tokens = 8000;
    r.q_pos0 = 0;
    r.new_kv = 0;
  }
  const PrefillSplit whole = plan_prefill_split(rows, 4, 64, 132, 1024);
  EXPECT_TRUE(whole.merge.empty());
  EXPECT_EQ(whole.work.size(), 8u * 250u);
}

// A wave or more of tiles (Llama-3-8B's 8 KV heads, group 4, 132 CTAs): a 576-token chunk after 8000
// tokens is 144 tiles, two waves whole with the second 12 tiles long; pieces over three or four waves
// finish sooner (measured 1.22-1.27x, RESULTS.md §3 session 41), so they split. A 1024-token chunk's
// 256 tiles fill two waves nearly: whole. Four waves of tiles or more: whole.
TEST(PrefillSplitPlan, TilesJustPastAWaveSplitOverMoreWaves) {
  const auto chunk_rows = [](int32_t n_tokens, int32_t q_pos0) {
    std::vector<PrefillRow> rows(8);
    for (int32_t h = 0; h < 8; ++h) {
      rows[static_cast<size_t>(h)].kv_head = h;
      rows[static_cast<size_t>(h)].n_tokens = n_tokens;
      rows[static_cast<size_t>(h)].q_pos0 = q_pos0;
    }
    return rows;
  };
  const PrefillSplit s = plan_prefill_split(chunk_rows(576, 8000), 4, 64, 132, 1024);
  EXPECT_EQ(plan_prefill_tiles(chunk_rows(576, 8000), 4).size(), 144u);
  EXPECT_FALSE(s.merge.empty());
  EXPECT_GT(s.work.size(), 264u);
  EXPECT_LE(s.work.size(), 528u);
  EXPECT_GE(s.chunk_pages, 16);
  EXPECT_TRUE(plan_prefill_split(chunk_rows(576, 8000), 4, 64, 132, 0).merge.empty());
  EXPECT_TRUE(plan_prefill_split(chunk_rows(1024, 8000), 4, 64, 132, 1024).merge.empty());
  EXPECT_TRUE(plan_prefill_split(chunk_rows(2112, 8000), 4, 64, 132, 1024).merge.empty());  // 528 tiles
  // Nine sequences' 64-token chunks: 144 tiles too.
  std::vector<PrefillRow> nine;
  for (int32_t i = 0; i < 9; ++i) {
    for (PrefillRow r : chunk_rows(64, 8000)) {
      r.q_row0 = 64 * i;
      nine.push_back(r);
    }
  }
  const PrefillSplit n = plan_prefill_split(nine, 4, 64, 132, 1024);
  EXPECT_GT(n.work.size(), 264u);
  EXPECT_LE(n.work.size(), 528u);
}

// The Hopper prefill's TMA box: the page, unless a launch has blocks under a page; then the
// largest power of two within its smallest block, 16 at least, and always dividing the page.
TEST(Sm90BoxTokens, PageUnlessBlocksUnderAPage) {
  EXPECT_EQ(sm90_box_tokens(128, 64), 64);         // no gathered walk (blocks of a tile): pages
  EXPECT_EQ(sm90_box_tokens(256, 128), 128);
  EXPECT_EQ(sm90_box_tokens(64, 64), 64);    // blocks of a page
  EXPECT_EQ(sm90_box_tokens(100, 64), 64);
  EXPECT_EQ(sm90_box_tokens(32, 64), 32);
  EXPECT_EQ(sm90_box_tokens(48, 64), 32);    // the power of two within the block
  EXPECT_EQ(sm90_box_tokens(16, 128), 16);
  EXPECT_EQ(sm90_box_tokens(8, 64), 16);     // 16 at least
  EXPECT_EQ(sm90_box_tokens(8, 16), 16);
  EXPECT_EQ(sm90_box_tokens(64, 128), 64);
  EXPECT_EQ(sm90_box_tokens(INT32_MAX, 32), 32);  // no kBlocks row
  for (const int32_t P : {16, 32, 64, 128}) {
    for (int32_t B = 1; B <= 300; ++B) {
      const int32_t box = sm90_box_tokens(B, P);
      EXPECT_TRUE(box >= 16 && box <= P && P % box == 0 && (box & (box - 1)) == 0) << "B " << B << " P " << P;
      EXPECT_TRUE(box == P || box <= std::max(B, 16)) << "B " << B << " P " << P;
    }
  }
}

}  // namespace
}  // namespace sparseserve::kernels::cuda
