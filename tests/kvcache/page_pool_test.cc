#include "kvcache/page_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "common/errors.h"

namespace sparseserve::kvcache {
namespace {

std::vector<int32_t> refs(const PagePool& pool) {
  std::vector<int32_t> out;
  for (int32_t p = 0; p < pool.num_pages(); ++p) out.push_back(pool.ref_count(p));
  return out;
}

TEST(PagePool, FreshPoolHandsOutEveryPageOnce) {
  PagePool pool(8);
  EXPECT_EQ(pool.num_free(), 8);
  EXPECT_EQ(pool.num_used(), 0);
  auto pages = pool.allocate(8);
  std::sort(pages.begin(), pages.end());
  EXPECT_EQ(pages, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  for (const int32_t p : pages) EXPECT_EQ(pool.ref_count(p), 1);
  EXPECT_EQ(pool.num_free(), 0);
  EXPECT_EQ(pool.num_used(), 8);
}

TEST(PagePool, EmptyAndInvalidSizes) {
  EXPECT_THROW(PagePool(-1), InvalidArgument);
  PagePool pool(0);
  EXPECT_TRUE(pool.can_allocate(0));
  EXPECT_FALSE(pool.can_allocate(1));
  EXPECT_TRUE(pool.allocate(0).empty());
}

TEST(PagePool, ExhaustionThrowsAndChangesNothing) {
  PagePool pool(4);
  const auto held = pool.allocate(3);
  EXPECT_FALSE(pool.can_allocate(2));
  EXPECT_FALSE(pool.can_allocate(-1));
  EXPECT_TRUE(pool.can_allocate(1));
  const auto before = refs(pool);
  EXPECT_THROW(pool.allocate(2), InternalError);
  EXPECT_THROW(pool.allocate(-1), InternalError);
  EXPECT_EQ(pool.num_free(), 1);
  EXPECT_EQ(refs(pool), before);
  pool.release(held);
  EXPECT_EQ(pool.num_free(), 4);
}

TEST(PagePool, DoubleReleaseThrowsAndChangesNothing) {
  PagePool pool(4);
  const auto pages = pool.allocate(2);
  pool.release(std::vector<int32_t>{pages[0]});
  const auto before = refs(pool);
  EXPECT_THROW(pool.release(std::vector<int32_t>{pages[0]}), InternalError);
  // A bad entry after good ones: the good ones are not released either.
  EXPECT_THROW(pool.release(std::vector<int32_t>{pages[1], pages[0]}), InternalError);
  EXPECT_THROW(pool.release(std::vector<int32_t>{pages[1], pages[1]}), InternalError);
  EXPECT_THROW(pool.release(std::vector<int32_t>{pages[1], 4}), InternalError);
  EXPECT_THROW(pool.release(std::vector<int32_t>{-1}), InternalError);
  EXPECT_EQ(refs(pool), before);
  EXPECT_EQ(pool.num_free(), 3);
  // The free set was not disturbed: the three free pages come out once each.
  auto again = pool.allocate(3);
  std::sort(again.begin(), again.end());
  EXPECT_EQ(std::adjacent_find(again.begin(), again.end()), again.end());
  EXPECT_EQ(std::count(again.begin(), again.end(), pages[1]), 0);
}

TEST(PagePool, RetainSharesUntilLastRelease) {
  PagePool pool(3);
  const int32_t p = pool.allocate(1)[0];
  pool.retain(p);
  pool.retain(p);
  EXPECT_EQ(pool.ref_count(p), 3);
  pool.release(std::vector<int32_t>{p});
  EXPECT_EQ(pool.ref_count(p), 2);
  EXPECT_EQ(pool.num_free(), 2);
  // Two references dropped in one call free the page once.
  pool.release(std::vector<int32_t>{p, p});
  EXPECT_EQ(pool.ref_count(p), 0);
  EXPECT_EQ(pool.num_free(), 3);
  auto all = pool.allocate(3);
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, (std::vector<int32_t>{0, 1, 2}));
}

TEST(PagePool, RetainOfFreeOrUnknownPageThrows) {
  PagePool pool(2);
  EXPECT_THROW(pool.retain(0), InternalError);
  EXPECT_THROW(pool.retain(2), InternalError);
  EXPECT_THROW(pool.retain(-1), InternalError);
  EXPECT_THROW(pool.ref_count(2), InternalError);
  EXPECT_EQ(pool.num_free(), 2);
  EXPECT_EQ(pool.ref_count(0), 0);
}

// The lowest free ids first, ascending: a fresh pool hands out 0, 1, 2, ...; released ids are taken
// again before higher ones, so a run of pages freed together comes back as a run.
TEST(PagePool, HandsOutTheLowestFreeIdsAscending) {
  PagePool pool(5000);  // past one word of the bitmap's upper level (4096 ids)
  EXPECT_EQ(pool.allocate(3), (std::vector<int32_t>{0, 1, 2}));
  const std::vector<int32_t> run = pool.allocate(200);
  for (int32_t i = 0; i < 200; ++i) EXPECT_EQ(run[static_cast<size_t>(i)], 3 + i);
  const std::vector<int32_t> rest = pool.allocate(4797);
  EXPECT_EQ(rest.front(), 203);
  EXPECT_EQ(rest.back(), 4999);
  EXPECT_EQ(pool.num_free(), 0);
  // Free a run in the middle and a few scattered ids, in no order: they come back ascending.
  std::vector<int32_t> gap;
  for (int32_t p = 4100; p < 4164; ++p) gap.push_back(p);
  std::reverse(gap.begin(), gap.end());
  pool.release(gap);
  pool.release(std::vector<int32_t>{4999, 7, 64});
  EXPECT_EQ(pool.allocate(2), (std::vector<int32_t>{7, 64}));
  const std::vector<int32_t> again = pool.allocate(64);
  for (int32_t i = 0; i < 64; ++i) EXPECT_EQ(again[static_cast<size_t>(i)], 4100 + i);
  EXPECT_EQ(pool.allocate(1), std::vector<int32_t>{4999});
}

// Random allocate/retain/release against a reference-count model.
TEST(PagePool, RandomOperationsMatchModel) {
  std::mt19937 rng(11);
  constexpr int32_t kPages = 300;  // several bitmap words, the last one partial
  PagePool pool(kPages);
  std::vector<int32_t> model(kPages, 0);
  std::vector<int32_t> held;  // one entry per reference
  for (int step = 0; step < 20000; ++step) {
    const unsigned op = rng() % 3;
    if (op == 0) {
      const auto n = static_cast<int32_t>(rng() % 24);
      const int32_t free_model = static_cast<int32_t>(std::count(model.begin(), model.end(), 0));
      ASSERT_EQ(pool.can_allocate(n), n <= free_model);
      if (n > free_model) {
        EXPECT_THROW(pool.allocate(n), InternalError);
        continue;
      }
      // The n lowest free ids, ascending.
      std::vector<int32_t> lowest;
      for (int32_t p = 0; p < kPages && static_cast<int32_t>(lowest.size()) < n; ++p) {
        if (model[static_cast<size_t>(p)] == 0) lowest.push_back(p);
      }
      const std::vector<int32_t> got = pool.allocate(n);
      ASSERT_EQ(got, lowest);
      for (const int32_t p : got) {
        ASSERT_EQ(model[static_cast<size_t>(p)], 0) << "handed out a used page";
        model[static_cast<size_t>(p)] = 1;
        held.push_back(p);
      }
    } else if (op == 1 && !held.empty()) {
      const int32_t p = held[rng() % held.size()];
      pool.retain(p);
      ++model[static_cast<size_t>(p)];
      held.push_back(p);
    } else if (!held.empty()) {
      std::shuffle(held.begin(), held.end(), rng);
      const size_t n = std::min<size_t>(held.size(), 1 + rng() % 6);
      const std::vector<int32_t> drop(held.end() - static_cast<std::ptrdiff_t>(n), held.end());
      held.resize(held.size() - n);
      pool.release(drop);
      for (const int32_t p : drop) --model[static_cast<size_t>(p)];
    }
    ASSERT_EQ(refs(pool), model);
    ASSERT_EQ(pool.num_free(), std::count(model.begin(), model.end(), 0));
  }
  pool.release(held);
  EXPECT_EQ(pool.num_free(), kPages);
}

}  // namespace
}  // namespace sparseserve::kvcache
