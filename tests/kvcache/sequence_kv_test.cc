#include "kvcache/sequence_kv.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "common/errors.h"

namespace sparseserve::kvcache {
namespace {

constexpr HeadRole R = HeadRole::kRetrieval;
constexpr HeadRole S = HeadRole::kStreaming;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Pages a sequence should hold, from the README's formulas.
int64_t expected_pages(int64_t len, int32_t p, int32_t r_slots, int32_t s_slots, const StreamingGeometry* g) {
  const int64_t blocks = ceil_div(len, p);
  return r_slots * blocks + (g ? s_slots * std::min<int64_t>(g->pages(), blocks) : 0);
}

std::set<int32_t> all_pages(const SequenceKv& s) {
  std::set<int32_t> out;
  for (int32_t k = 0; k < s.retrieval_slots(); ++k) out.insert(s.retrieval_pages(k).begin(), s.retrieval_pages(k).end());
  for (int32_t k = 0; k < s.streaming_slots(); ++k) out.insert(s.streaming_pages(k).begin(), s.streaming_pages(k).end());
  return out;
}

TEST(SequenceKv, RejectsInconsistentLayouts) {
  EXPECT_THROW(SequenceKv(64, 2, 1, std::nullopt), InternalError);
  EXPECT_THROW(SequenceKv(64, 2, 1, StreamingGeometry(32, {0, 64})), InternalError);
  EXPECT_THROW(SequenceKv(64, -1, 0, std::nullopt), InternalError);
  EXPECT_NO_THROW(SequenceKv(64, 2, 0, std::nullopt));
}

TEST(SequenceKv, RetrievalSlotsTakeOnePagePerBlock) {
  PagePool pool(100);
  SequenceKv s(16, 3, 0, std::nullopt);
  EXPECT_EQ(s.pages_needed(1), 3);
  EXPECT_EQ(s.pages_needed(16), 3);
  EXPECT_EQ(s.pages_needed(17), 6);
  s.grow(17, pool);
  EXPECT_EQ(s.length(), 17);
  EXPECT_EQ(s.pages_held(R), 6);
  EXPECT_EQ(s.pages_held(S), 0);
  for (int32_t k = 0; k < 3; ++k) EXPECT_EQ(s.retrieval_pages(k).size(), 2u);
  EXPECT_EQ(s.pages_needed(17), 0);
  EXPECT_EQ(s.pages_needed(5), 0);
  EXPECT_EQ(s.pages_needed(32), 0);
  EXPECT_EQ(s.pages_needed(33), 3);
  EXPECT_EQ(pool.num_used(), 6);
  const auto first = s.retrieval_pages(1);
  s.grow(40, pool);
  EXPECT_TRUE(std::equal(first.begin(), first.end(), s.retrieval_pages(1).begin())) << "block table not append-only";
  EXPECT_EQ(all_pages(s).size(), 9u);
}

// A grow hands each slot a consecutive run of the pool's ids (the paged decode reads runs faster
// than scattered pages), also in the gap a released sequence left.
TEST(SequenceKv, GrowGivesEachSlotARun) {
  PagePool pool(1000);
  SequenceKv a(64, 4, 0, std::nullopt), b(64, 4, 0, std::nullopt), c(64, 4, 0, std::nullopt);
  const auto runs = [](const SequenceKv& s, size_t from) {
    for (int32_t k = 0; k < s.retrieval_slots(); ++k) {
      const auto pages = s.retrieval_pages(k);
      for (size_t i = from + 1; i < pages.size(); ++i) {
        if (pages[i] != pages[i - 1] + 1) return false;
      }
    }
    return true;
  };
  a.grow(64 * 32, pool);  // a prefill chunk of 2048 tokens: 32 pages a slot
  b.grow(64 * 50, pool);
  EXPECT_TRUE(runs(a, 0) && runs(b, 0));
  EXPECT_EQ(a.retrieval_pages(0).front(), 0);
  EXPECT_EQ(a.retrieval_pages(1).front(), 32);
  a.release(pool);  // leaves a gap of 128 pages before b's
  c.grow(64 * 20, pool);
  EXPECT_TRUE(runs(c, 0));
  EXPECT_EQ(c.retrieval_pages(3).back(), 79);  // inside the gap
  c.grow(64 * 30, pool);  // the next chunk: runs again, from the gap's rest
  EXPECT_TRUE(runs(c, 20));
  EXPECT_EQ(c.retrieval_pages(0)[20], 80);
}

TEST(SequenceKv, GrowIsAllOrNothing) {
  PagePool pool(10);
  const StreamingGeometry g(16, {4, 20});  // 1 sink + 3 ring pages per slot
  SequenceKv s(16, 2, 2, g);
  s.grow(20, pool);  // 2 blocks: 2*2 retrieval + 2*2 streaming
  EXPECT_EQ(pool.num_free(), 2);
  const auto r0 = s.retrieval_pages(0), s1 = s.streaming_pages(1);
  EXPECT_EQ(s.pages_needed(40), 4);
  EXPECT_THROW(s.grow(40, pool), InternalError);
  EXPECT_EQ(s.length(), 20);
  EXPECT_EQ(pool.num_free(), 2);
  EXPECT_EQ(s.retrieval_pages(0), r0);
  EXPECT_EQ(s.streaming_pages(1), s1);
  EXPECT_EQ(s.pages_held(R) + s.pages_held(S), 8);
  EXPECT_THROW(s.grow(19, pool), InternalError);  // never shrinks
  EXPECT_EQ(s.length(), 20);
  s.grow(20, pool);  // same length: nothing to do
  s.grow(32, pool);  // still two blocks
  EXPECT_EQ(pool.num_free(), 2);
}

TEST(SequenceKv, ReleaseReturnsEveryPage) {
  PagePool pool(400);
  const StreamingGeometry g(32, {10, 100});
  SequenceKv s(32, 2, 3, g);
  for (const int64_t len : {1, 31, 33, 200, 1000, 5000}) {
    s.grow(len, pool);
    EXPECT_EQ(pool.num_used(), expected_pages(len, 32, 2, 3, &g));
    EXPECT_EQ(pool.num_used(), s.pages_held(R) + s.pages_held(S));
    EXPECT_EQ(static_cast<int64_t>(all_pages(s).size()), pool.num_used()) << "a page held twice";
    s.release(pool);
    EXPECT_EQ(pool.num_free(), 400);
    EXPECT_EQ(s.length(), 0);
    EXPECT_EQ(s.pages_held(R) + s.pages_held(S), 0);
    EXPECT_EQ(s.retrieval_slots(), 2);
    EXPECT_EQ(s.streaming_slots(), 3);
  }
}

// pages_needed is exactly what grow takes from the pool, and the held count follows the formula.
TEST(SequenceKv, PagesNeededIsExact) {
  std::mt19937 rng(3);
  for (const int32_t p : {16, 32, 64, 128}) {
    for (int trial = 0; trial < 20; ++trial) {
      const auto r_slots = static_cast<int32_t>(rng() % 4), s_slots = static_cast<int32_t>(rng() % 4);
      const StreamingWindow w{static_cast<int32_t>(rng() % 300), 1 + static_cast<int32_t>(rng() % 600)};
      const StreamingGeometry g(p, w);
      PagePool pool(1'000'000);
      SequenceKv s(p, r_slots, s_slots, s_slots > 0 ? std::optional(g) : std::nullopt);
      int64_t len = 0;
      for (int step = 0; step < 60; ++step) {
        len += rng() % 3 == 0 ? 1 + rng() % 3 : rng() % (4 * static_cast<unsigned>(p));
        const int32_t need = s.pages_needed(len);
        const int32_t free_before = pool.num_free();
        s.grow(len, pool);
        ASSERT_EQ(free_before - pool.num_free(), need);
        ASSERT_EQ(s.pages_held(R), r_slots * ceil_div(len, p));
        ASSERT_EQ(s.pages_held(S), s_slots * g.pages_for_length(len));
        ASSERT_EQ(pool.num_used(), expected_pages(len, p, r_slots, s_slots, s_slots > 0 ? &g : nullptr));
      }
      s.release(pool);
      ASSERT_EQ(pool.num_used(), 0);
    }
  }
}

// Streaming slots hold pages() pages each once the ring is full, whatever the length.
TEST(SequenceKv, StreamingPagesAreConstant) {
  for (const int32_t p : {16, 32, 64, 128}) {
    const StreamingGeometry g(p, {p + 3, 3 * p});
    PagePool pool(1000);
    SequenceKv s(p, 0, 4, g);
    s.grow(int64_t{g.pages()} * p, pool);
    const int32_t full = pool.num_used();
    EXPECT_EQ(full, 4 * g.pages());
    for (int64_t len = int64_t{g.pages()} * p; len < int64_t{1} << 24; len = len * 3 + 1) {
      EXPECT_EQ(s.pages_needed(len), 0);
      s.grow(len, pool);
      EXPECT_EQ(pool.num_used(), full);
      EXPECT_EQ(s.pages_held(S), full);
    }
  }
}

// With real page ids: grow in random chunks, write each new position to the page the table gives
// for it, and after each write check that every key the query attends is still in its page.
// The page list of each slot is append-only (sink pages never change, ring pages are reused).
TEST(SequenceKv, RingKeepsEveryAttendedKeyWithRealPages) {
  std::mt19937 rng(5);
  for (const int32_t p : {16, 32, 64, 128}) {
    for (const StreamingWindow w : {StreamingWindow{0, 1}, StreamingWindow{0, p + 1}, StreamingWindow{5, 7},
                                    StreamingWindow{p + 9, 2 * p}, StreamingWindow{64, 256}}) {
      const StreamingGeometry g(p, w);
      constexpr int32_t kSlots = 2;
      PagePool pool(kSlots * g.pages());  // exactly what the slots may ever hold
      SequenceKv s(p, 0, kSlots, g);
      const int64_t len = 10 * std::max<int64_t>(w.sink_tokens + w.local_tokens, int64_t{g.pages()} * p);
      // (page id, offset) -> position last written there, over all slots.
      std::vector<int64_t> cell(static_cast<size_t>(pool.num_pages()) * static_cast<size_t>(p), -1);
      std::vector<std::vector<int32_t>> seen(kSlots);
      auto at = [&](int32_t slot, int64_t j) -> int64_t& {
        const PageLocation l = g.locate(j);
        const int32_t page = s.streaming_pages(slot).at(static_cast<size_t>(l.index));
        return cell[static_cast<size_t>(page) * static_cast<size_t>(p) + static_cast<size_t>(l.offset)];
      };
      for (int64_t t = 0; t < len;) {
        const int64_t next = std::min<int64_t>(len, t + 1 + static_cast<int64_t>(rng() % (3 * static_cast<unsigned>(p))));
        s.grow(next, pool);
        for (int32_t k = 0; k < kSlots; ++k) {
          const auto& pages = s.streaming_pages(k);
          ASSERT_TRUE(std::equal(seen[static_cast<size_t>(k)].begin(), seen[static_cast<size_t>(k)].end(), pages.begin()));
          seen[static_cast<size_t>(k)] = pages;
        }
        for (; t < next; ++t) {
          for (int32_t k = 0; k < kSlots; ++k) {
            at(k, t) = t;
            for (int64_t j = 0; j < std::min<int64_t>(w.sink_tokens, t + 1); ++j) ASSERT_EQ(at(k, j), j) << "sink key lost";
            for (int64_t j = std::max<int64_t>(0, t - w.local_tokens + 1); j <= t; ++j) ASSERT_EQ(at(k, j), j) << "local key lost";
          }
        }
      }
      EXPECT_EQ(s.pages_held(S), kSlots * g.pages());
      s.release(pool);
      EXPECT_EQ(pool.num_free(), pool.num_pages());
    }
  }
}

}  // namespace
}  // namespace sparseserve::kvcache
