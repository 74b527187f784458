#include "kvcache/geometry.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "common/errors.h"

namespace sparseserve::kvcache {
namespace {

constexpr int32_t kPageTokens[] = {16, 32, 64, 128};

// (sink, local) windows for page size P: sink 0, sink not a multiple of P, local < P, local = P,
// local one past a page, large windows.
std::vector<StreamingWindow> windows_for(int32_t p) {
  return {{0, 1},      {0, 5},          {0, p},         {0, 300},   {1, 1},     {3, p - 1},
          {p, p},      {p + 5, 2 * p - 1}, {2 * p, p + 1}, {64, 256}, {5, 1000}, {3 * p + 7, 100}};
}

TEST(KvCacheConfig, Validate) {
  for (const int32_t p : kPageTokens) {
    EXPECT_NO_THROW((KvCacheConfig{p, 16}.validate()));
    EXPECT_NO_THROW((KvCacheConfig{p, 1}.validate()));
    EXPECT_NO_THROW((KvCacheConfig{p, p}.validate()));
    EXPECT_THROW((KvCacheConfig{p, 2 * p}.validate()), InvalidArgument);
  }
  for (const int32_t p : {0, -64, 8, 48, 96, 256}) EXPECT_THROW((KvCacheConfig{p, 16}.validate()), InvalidArgument);
  EXPECT_THROW((KvCacheConfig{64, 0}.validate()), InvalidArgument);
  EXPECT_THROW((KvCacheConfig{64, -16}.validate()), InvalidArgument);
  EXPECT_THROW((KvCacheConfig{64, 24}.validate()), InvalidArgument);
  EXPECT_NO_THROW(KvCacheConfig{}.validate());
}

TEST(StreamingGeometry, PageCounts) {
  const StreamingGeometry g(64, {64, 256});
  EXPECT_EQ(g.sink_pages(), 1);
  EXPECT_EQ(g.ring_pages(), 5);
  EXPECT_EQ(g.pages(), 6);
  EXPECT_EQ(g.page_tokens(), 64);
  EXPECT_EQ(StreamingGeometry(64, {0, 1}).sink_pages(), 0);
  EXPECT_EQ(StreamingGeometry(64, {0, 1}).ring_pages(), 2);
  EXPECT_EQ(StreamingGeometry(64, {65, 64}).sink_pages(), 2);
  EXPECT_EQ(StreamingGeometry(64, {65, 64}).ring_pages(), 2);
  EXPECT_EQ(StreamingGeometry(16, {4, 65}).ring_pages(), 6);
}

TEST(StreamingGeometry, RejectsBadWindows) {
  EXPECT_THROW(StreamingGeometry(64, {-1, 64}), InvalidArgument);
  EXPECT_THROW(StreamingGeometry(64, {0, 0}), InvalidArgument);
  EXPECT_THROW(StreamingGeometry(0, {0, 64}), InvalidArgument);
}

TEST(StreamingGeometry, Locate) {
  const StreamingGeometry g(16, {20, 40});  // sink pages 2, ring pages 4
  auto at = [&](int64_t pos) {
    const PageLocation l = g.locate(pos);
    return std::pair{l.index, l.offset};
  };
  EXPECT_EQ(at(0), std::pair(0, 0));
  EXPECT_EQ(at(19), std::pair(1, 3));
  EXPECT_EQ(at(31), std::pair(1, 15));
  EXPECT_EQ(at(32), std::pair(2, 0));  // first ring page
  EXPECT_EQ(at(95), std::pair(5, 15));
  EXPECT_EQ(at(96), std::pair(2, 0));  // wraps onto the first ring page
  EXPECT_EQ(at(1'000'000'007), std::pair(2 + static_cast<int32_t>((1'000'000'007 / 16 - 2) % 4), 7));
  EXPECT_THROW(g.locate(-1), InternalError);
}

TEST(StreamingGeometry, AttendsIsTheLambdaBand) {
  const StreamingGeometry g(16, {4, 10});
  for (int64_t t = 0; t < 60; ++t) {
    for (int64_t j = 0; j < 70; ++j) {
      EXPECT_EQ(g.attends(t, j), j <= t && (j < 4 || t - j < 10)) << t << " " << j;
    }
  }
}

// pages_for_length(len) = number of distinct page indices touched by positions 0 .. len-1.
TEST(StreamingGeometry, PagesForLengthCountsTouchedPages) {
  for (const int32_t p : kPageTokens) {
    for (const StreamingWindow w : windows_for(p)) {
      const StreamingGeometry g(p, w);
      std::set<int32_t> touched;
      EXPECT_EQ(g.pages_for_length(0), 0);
      EXPECT_EQ(g.pages_for_length(-5), 0);
      const int64_t len = 4LL * g.pages() * p;
      for (int64_t pos = 0; pos < len; ++pos) {
        touched.insert(g.locate(pos).index);
        ASSERT_EQ(g.pages_for_length(pos + 1), static_cast<int32_t>(touched.size())) << p << " " << pos;
      }
      EXPECT_EQ(g.pages_for_length(int64_t{1} << 40), g.pages());
      EXPECT_EQ(*touched.rbegin(), g.pages() - 1);
    }
  }
}

// Simulated writes: positions are written to locate(pos) in order, up to t + ahead; then every key
// j that query t attends must still be in its slot (and sink pages are never written past the
// sink blocks). Walks to 10x the window (and at least 10 times around the ring).
void check_ring(int32_t p, StreamingWindow w, int64_t ahead) {
  const StreamingGeometry g(p, w);
  const int64_t len = 10 * std::max<int64_t>(w.sink_tokens + w.local_tokens, int64_t{g.pages()} * p);
  std::vector<int64_t> slot(static_cast<size_t>(g.pages()) * static_cast<size_t>(p), -1);  // (index, offset) -> pos
  auto cell = [&](int64_t pos) -> int64_t& {
    const PageLocation l = g.locate(pos);
    return slot[static_cast<size_t>(l.index) * static_cast<size_t>(p) + static_cast<size_t>(l.offset)];
  };
  const std::string where = "P " + std::to_string(p) + " sink " + std::to_string(w.sink_tokens) + " local " +
                            std::to_string(w.local_tokens) + " ahead " + std::to_string(ahead);
  int64_t written = 0;  // positions [0, written) are in the slots
  for (int64_t t = 0; t < len; ++t) {
    for (; written <= t + ahead; ++written) {
      ASSERT_EQ(g.locate(written).index < g.sink_pages(), written < int64_t{g.sink_pages()} * p) << where;
      cell(written) = written;
    }
    // Attended keys: the sink [0, sink) and the local band (t - local, t].
    for (int64_t j = 0; j < std::min<int64_t>(w.sink_tokens, t + 1); ++j) {
      ASSERT_TRUE(g.attends(t, j));
      ASSERT_EQ(cell(j), j) << where << ": sink key " << j << " lost at t " << t;
    }
    for (int64_t j = std::max<int64_t>(0, t - w.local_tokens + 1); j <= t; ++j) {
      ASSERT_TRUE(g.attends(t, j));
      ASSERT_EQ(cell(j), j) << where << ": key " << j << " lost at t " << t;
    }
    const int64_t outside = t - w.local_tokens;  // just left the band
    if (outside >= w.sink_tokens) {
      ASSERT_FALSE(g.attends(t, outside));
    }
  }
}

TEST(StreamingGeometry, RingKeepsEveryAttendedKeyAndNeverRecyclesSinkPages) {
  for (const int32_t p : kPageTokens) {
    for (const StreamingWindow w : windows_for(p)) check_ring(p, w, 0);
  }
}

// The ring's extra page: up to a page of positions after t may be written before t's attention
// runs (a decode step or a prefill chunk written ahead) without losing any key t attends.
TEST(StreamingGeometry, RingToleratesWritesUpToAPageAhead) {
  for (const int32_t p : kPageTokens) {
    for (const StreamingWindow w : windows_for(p)) check_ring(p, w, p - 1);
  }
}

}  // namespace
}  // namespace sparseserve::kvcache
