#include "kvcache/kv_cache_manager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "common/errors.h"

namespace sparseserve::kvcache {
namespace {

constexpr HeadRole R = HeadRole::kRetrieval;
constexpr HeadRole S = HeadRole::kStreaming;

const SequenceLayout kDense{4, 0, std::nullopt};
const SequenceLayout kBalanced{2, 2, StreamingWindow{4, 20}};  // P 16: 1 sink + 3 ring pages per slot

std::vector<int32_t> concat(const std::vector<std::vector<int32_t>>& parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

TEST(SequenceLayout, FromRoles) {
  const HeadRoles mixed(2, 4, {R, S, R, S, R, R, R, S});
  const SequenceLayout l = SequenceLayout::from_roles(mixed, StreamingWindow{8, 64});
  EXPECT_EQ(l.retrieval_slots, 5);  // one lane per (layer, KV head) of the role
  EXPECT_EQ(l.streaming_slots, 3);
  ASSERT_TRUE(l.streaming.has_value());
  EXPECT_EQ(l.streaming->local_tokens, 64);
  EXPECT_THROW(SequenceLayout::from_roles(mixed, std::nullopt), InvalidArgument);
  const SequenceLayout d = SequenceLayout::from_roles(HeadRoles::all_retrieval(2, 4), StreamingWindow{8, 64});
  EXPECT_EQ(d.retrieval_slots, 8);
  EXPECT_EQ(d.streaming_slots, 0);
  EXPECT_FALSE(d.streaming.has_value());
}

TEST(KvCacheManager, RejectsBadConfigAndLayouts) {
  EXPECT_THROW(KvCacheManager(KvCacheConfig{48, 16}, 10), InvalidArgument);
  EXPECT_THROW(KvCacheManager(KvCacheConfig{64, 16}, -1), InvalidArgument);
  KvCacheManager m(KvCacheConfig{16, 16}, 10);
  m.add_sequence(1, kDense);
  EXPECT_THROW(m.add_sequence(1, kDense), InternalError);
  EXPECT_THROW(m.add_sequence(2, SequenceLayout{2, 2, std::nullopt}), InternalError);
  EXPECT_THROW(m.add_sequence(3, SequenceLayout{2, 2, StreamingWindow{0, 0}}), InternalError);
  EXPECT_THROW(m.add_sequence(4, SequenceLayout{0, 0, std::nullopt}), InternalError);
  EXPECT_THROW(m.add_sequence(5, SequenceLayout{-1, 1, StreamingWindow{}}), InternalError);
  EXPECT_EQ(m.num_sequences(), 1u);
  EXPECT_FALSE(m.has_sequence(2));
  EXPECT_THROW(m.sequence(9), InternalError);
  EXPECT_THROW(m.allocate(9, 4), InternalError);
  EXPECT_THROW(m.pages_needed(9, 4), InternalError);
  m.release(9);  // unknown: no-op
  EXPECT_EQ(m.free_pages(), 10);
}

TEST(KvCacheManager, ExhaustionChangesNothingAndReleaseRestoresBaseline) {
  KvCacheManager m(KvCacheConfig{16, 16}, 20);
  m.add_sequence(1, kBalanced);
  m.add_sequence(2, kDense);
  EXPECT_EQ(m.pages_needed(1, 50), 2 * 4 + 2 * 4);
  m.allocate(1, 50);
  EXPECT_EQ(m.used_pages(R), 8);
  EXPECT_EQ(m.used_pages(S), 8);
  EXPECT_EQ(m.free_pages(), 4);
  EXPECT_EQ(m.pages_needed(2, 17), 8);
  EXPECT_FALSE(m.can_allocate(2, 17));
  EXPECT_THROW(m.allocate(2, 17), InternalError);
  EXPECT_EQ(m.sequence(2).length(), 0);
  EXPECT_EQ(m.free_pages(), 4);
  EXPECT_EQ(m.used_pages(R), 8);
  EXPECT_TRUE(m.can_allocate(2, 16));
  m.allocate(2, 16);
  EXPECT_EQ(m.used_pages(R), 12);
  EXPECT_EQ(m.free_pages(), 0);
  // Streaming never grows past its ring: sequence 1 still needs only retrieval pages.
  EXPECT_EQ(m.pages_needed(1, 1000), 2 * (63 - 4));
  m.release(1);
  EXPECT_EQ(m.used_pages(S), 0);
  EXPECT_EQ(m.used_pages(R), 4);
  m.release(2);
  EXPECT_EQ(m.free_pages(), 20);
  EXPECT_EQ(m.used_pages(R), 0);
  EXPECT_EQ(m.num_sequences(), 0u);
}

TEST(KvCacheManager, TablesForMixedBatch) {
  KvCacheManager m(KvCacheConfig{16, 16}, 100);
  m.add_sequence(10, kDense);
  m.add_sequence(20, kBalanced);
  m.add_sequence(30, kBalanced);
  m.add_sequence(40, kDense);
  m.allocate(10, 40);   // 3 blocks
  m.allocate(20, 100);  // 7 blocks; ring full (1 sink + 3 ring)
  m.allocate(30, 1);
  const std::vector<uint64_t> ids{10, 20, 30, 40};
  const auto& a = m.sequence(10);
  const auto& b = m.sequence(20);
  const auto& c = m.sequence(30);

  const PageTable rt = m.retrieval_table(ids);
  EXPECT_EQ(rt.page_tokens, 16);
  EXPECT_EQ(rt.slots, 4);
  EXPECT_EQ(rt.rows(), 16);
  EXPECT_EQ(rt.indptr, (std::vector<int32_t>{0, 3, 6, 9, 12, 19, 26, 26, 26, 27, 28, 28, 28, 28, 28, 28, 28}));
  EXPECT_EQ(rt.last_page_len, (std::vector<int32_t>{8, 8, 8, 8, 4, 4, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(rt.seq_len, (std::vector<int64_t>{40, 100, 1, 0}));
  EXPECT_EQ(rt.indices, concat({a.retrieval_pages(0), a.retrieval_pages(1), a.retrieval_pages(2), a.retrieval_pages(3),
                                b.retrieval_pages(0), b.retrieval_pages(1), c.retrieval_pages(0), c.retrieval_pages(1)}));

  const PageTable st = m.streaming_table(ids);
  EXPECT_EQ(st.slots, 2);
  EXPECT_EQ(st.rows(), 8);
  EXPECT_EQ(st.indptr, (std::vector<int32_t>{0, 0, 0, 4, 8, 9, 10, 10, 10}));
  EXPECT_EQ(st.last_page_len, (std::vector<int32_t>{0, 0, 16, 16, 16, 16, 0, 0}));
  EXPECT_EQ(st.seq_len, (std::vector<int64_t>{40, 100, 1, 0}));
  EXPECT_EQ(st.indices, concat({b.streaming_pages(0), b.streaming_pages(1), c.streaming_pages(0), c.streaming_pages(1)}));
  EXPECT_EQ(st.sink_tokens, (std::vector<int32_t>{0, 4, 4, 0}));
  EXPECT_EQ(st.local_tokens, (std::vector<int32_t>{0, 20, 20, 0}));
  EXPECT_EQ(st.sink_pages, (std::vector<int32_t>{0, 1, 1, 0}));
  EXPECT_EQ(st.ring_pages, (std::vector<int32_t>{0, 3, 3, 0}));

  // Every page appears once across both tables: no page is shared between rows.
  std::vector<int32_t> every = rt.indices;
  every.insert(every.end(), st.indices.begin(), st.indices.end());
  std::sort(every.begin(), every.end());
  EXPECT_EQ(std::adjacent_find(every.begin(), every.end()), every.end());
  EXPECT_EQ(static_cast<int32_t>(every.size()), m.num_pages() - m.free_pages());

  // Order follows the batch; a batch without streaming sequences has no streaming rows.
  const std::vector<uint64_t> dense_only{40, 10};
  const PageTable dt = m.retrieval_table(dense_only);
  EXPECT_EQ(dt.indptr, (std::vector<int32_t>{0, 0, 0, 0, 0, 3, 6, 9, 12}));
  EXPECT_EQ(dt.indices, concat({a.retrieval_pages(0), a.retrieval_pages(1), a.retrieval_pages(2), a.retrieval_pages(3)}));
  const PageTable ds = m.streaming_table(dense_only);
  EXPECT_EQ(ds.slots, 0);
  EXPECT_EQ(ds.rows(), 0);
  EXPECT_EQ(ds.indptr, (std::vector<int32_t>{0}));
  EXPECT_EQ(ds.seq_len, (std::vector<int64_t>{0, 40}));
  EXPECT_THROW(m.retrieval_table(std::vector<uint64_t>{10, 99}), InternalError);
}

TEST(KvCacheManager, StreamingTableCarriesEachSequencesWindow) {
  KvCacheManager m(KvCacheConfig{16, 16}, 100);
  m.add_sequence(1, kBalanced);
  m.add_sequence(2, SequenceLayout{2, 2, StreamingWindow{40, 40}});
  m.allocate(1, 10);
  m.allocate(2, 100);
  const std::vector<uint64_t> ids{2, 1};
  const PageTable st = m.streaming_table(ids);
  const auto& a = m.sequence(1);
  const auto& b = m.sequence(2);
  EXPECT_EQ(st.slots, 2);
  EXPECT_EQ(st.sink_tokens, (std::vector<int32_t>{40, 4}));
  EXPECT_EQ(st.local_tokens, (std::vector<int32_t>{40, 20}));
  EXPECT_EQ(st.sink_pages, (std::vector<int32_t>{3, 1}));  // ceil(40 / 16), ceil(4 / 16)
  EXPECT_EQ(st.ring_pages, (std::vector<int32_t>{4, 3}));  // ceil(local / 16) + 1
  EXPECT_EQ(st.indices, concat({b.streaming_pages(0), b.streaming_pages(1), a.streaming_pages(0), a.streaming_pages(1)}));
  EXPECT_EQ(st.indptr[2], static_cast<int32_t>(b.streaming_pages(0).size() + b.streaming_pages(1).size()));
  EXPECT_NO_THROW(m.retrieval_table(ids));
}

// Random add/allocate/release against a model of per-sequence lengths: counts per role, free pages,
// can_allocate and all-or-nothing failures match; no page is held twice; nothing leaks.
TEST(KvCacheManager, RandomOperationsMatchModel) {
  std::mt19937 rng(1234);
  const SequenceLayout layouts[] = {kDense, kBalanced, {1, 3, StreamingWindow{0, 33}}, {0, 2, StreamingWindow{40, 8}}};
  constexpr int32_t kPages = 300, kP = 16;
  KvCacheManager m(KvCacheConfig{kP, 16}, kPages);
  struct Model {
    SequenceLayout layout;
    int64_t len = 0;
  };
  std::map<uint64_t, Model> model;
  auto expected = [&](const Model& s, int64_t len, HeadRole role) -> int64_t {
    const int64_t blocks = (len + kP - 1) / kP;
    if (role == R) return s.layout.retrieval_slots * blocks;
    if (s.layout.streaming_slots == 0) return 0;
    return s.layout.streaming_slots * std::min<int64_t>(StreamingGeometry(kP, *s.layout.streaming).pages(), blocks);
  };
  uint64_t next_id = 1;
  for (int step = 0; step < 5000; ++step) {
    const unsigned op = rng() % 10;
    if (op < 2 || model.empty()) {
      const SequenceLayout& l = layouts[rng() % 4];
      m.add_sequence(next_id, l);
      model[next_id++] = Model{l, 0};
    } else if (op < 8) {
      auto it = std::next(model.begin(), static_cast<std::ptrdiff_t>(rng() % model.size()));
      const int64_t len = it->second.len + static_cast<int64_t>(rng() % 80);
      const int64_t need = expected(it->second, len, R) + expected(it->second, len, S) -
                           expected(it->second, it->second.len, R) - expected(it->second, it->second.len, S);
      ASSERT_EQ(m.pages_needed(it->first, len), need);
      ASSERT_EQ(m.can_allocate(it->first, len), need <= m.free_pages());
      if (need <= m.free_pages()) {
        m.allocate(it->first, len);
        it->second.len = len;
      } else {
        const int32_t free_before = m.free_pages();
        ASSERT_THROW(m.allocate(it->first, len), InternalError);
        ASSERT_EQ(m.free_pages(), free_before);
      }
    } else {
      auto it = std::next(model.begin(), static_cast<std::ptrdiff_t>(rng() % model.size()));
      m.release(it->first);
      model.erase(it);
    }
    int64_t used[2] = {0, 0};
    std::set<int32_t> held;
    size_t held_entries = 0;
    for (const auto& [id, s] : model) {
      ASSERT_EQ(m.sequence(id).length(), s.len);
      used[0] += expected(s, s.len, R);
      used[1] += expected(s, s.len, S);
      const SequenceKv& kv = m.sequence(id);
      for (int32_t k = 0; k < kv.retrieval_slots(); ++k) {
        held.insert(kv.retrieval_pages(k).begin(), kv.retrieval_pages(k).end());
        held_entries += kv.retrieval_pages(k).size();
      }
      for (int32_t k = 0; k < kv.streaming_slots(); ++k) {
        held.insert(kv.streaming_pages(k).begin(), kv.streaming_pages(k).end());
        held_entries += kv.streaming_pages(k).size();
      }
    }
    ASSERT_EQ(m.used_pages(R), used[0]);
    ASSERT_EQ(m.used_pages(S), used[1]);
    ASSERT_EQ(m.free_pages(), kPages - used[0] - used[1]);
    ASSERT_EQ(held.size(), held_entries) << "a page is held twice";
    ASSERT_EQ(m.num_sequences(), model.size());
  }
  for (const auto& [id, s] : model) m.release(id);
  EXPECT_EQ(m.free_pages(), kPages);
  EXPECT_EQ(m.used_pages(R), 0);
  EXPECT_EQ(m.used_pages(S), 0);
}

}  // namespace
}  // namespace sparseserve::kvcache
