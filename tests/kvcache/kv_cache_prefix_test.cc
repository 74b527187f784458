// KvCacheManager with prefix caching: a later sequence with the same prompt blocks shares the pages
// an earlier one computed; layouts with streaming slots, other profiles and keys that do not match
// take no part; cached pages count as free and are taken back when the pool runs short; and, over
// random operations, a shared page always holds the K/V of the prefix that found it.
#include "kvcache/kv_cache_manager.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "common/errors.h"

namespace sparseserve::kvcache {
namespace {

constexpr HeadRole R = HeadRole::kRetrieval;
constexpr HeadRole S = HeadRole::kStreaming;
constexpr int32_t P = 16;
const KvCacheConfig kConfig{P, 4};
const SequenceLayout kDense{4, 0, std::nullopt};
const SequenceLayout kBalanced{2, 2, StreamingWindow{4, 20}};

std::shared_ptr<const PrefixKey> key(std::vector<int32_t> tokens, std::string profile = "dense", bool match = true) {
  return std::make_shared<const PrefixKey>(PrefixKey{std::move(profile), std::move(tokens), match});
}

std::vector<int32_t> prompt(int32_t n, int32_t first = 1000) {
  std::vector<int32_t> t;
  for (int32_t i = 0; i < n; ++i) t.push_back(first + i);
  return t;
}

std::vector<int32_t> block_pages(const KvCacheManager& m, uint64_t id, int32_t block) {
  std::vector<int32_t> out;
  const SequenceKv& s = m.sequence(id);
  for (int32_t k = 0; k < s.retrieval_slots(); ++k) out.push_back(s.retrieval_pages(k)[static_cast<size_t>(block)]);
  return out;
}

TEST(KvCachePrefix, ASecondSequenceWithTheSamePromptSharesTheFirstsBlocks) {
  KvCacheManager m(kConfig, 64, true);
  ASSERT_TRUE(m.prefix_caching());
  const auto k = key(prompt(50));  // 3 full blocks and 2 tokens
  EXPECT_EQ(m.add_sequence(1, kDense, k, 49), 0);  // nothing cached yet
  m.allocate(1, 50);
  m.commit(1, 20, k->tokens);  // block 0 is computed
  EXPECT_EQ(m.add_sequence(2, kDense, k, 49), P);
  EXPECT_EQ(block_pages(m, 2, 0), block_pages(m, 1, 0));
  EXPECT_EQ(m.sequence(2).length(), P);
  m.release(2);
  m.commit(1, 50, k->tokens);  // blocks 1 and 2 (block 3 is not full)
  EXPECT_EQ(m.used_pages(R), 16);
  EXPECT_EQ(m.add_sequence(2, kDense, k, 49), 3 * P);
  for (int32_t b = 0; b < 3; ++b) EXPECT_EQ(block_pages(m, 2, b), block_pages(m, 1, b)) << b;
  EXPECT_EQ(m.used_pages(R), 16);  // shared pages count once
  EXPECT_EQ(m.pages_needed(2, 50), 4);
  m.allocate(2, 50);
  EXPECT_NE(block_pages(m, 2, 3), block_pages(m, 1, 3));
  EXPECT_EQ(m.used_pages(R), 20);
  EXPECT_EQ(m.free_pages(), 44);
  // At most max_cached_tokens: the request's last token is always computed.
  EXPECT_EQ(m.add_sequence(3, kDense, k, 47), 2 * P);
  // A key that must not match (prompt logprobs) starts from nothing.
  EXPECT_EQ(m.add_sequence(4, kDense, key(prompt(50), "dense", false), 49), 0);
  m.release(3);
  m.release(4);
  // Sequence 1 ends: its last block's pages are free, its cached blocks still shared with 2.
  m.release(1);
  EXPECT_EQ(m.used_pages(R), 16);
  EXPECT_EQ(m.cached_free_pages(), 0);
  m.release(2);
  EXPECT_EQ(m.used_pages(R), 0);
  EXPECT_EQ(m.cached_free_pages(), 12);
  EXPECT_EQ(m.free_pages(), 64);
  // The cached pages go back to the pool when an allocation needs them.
  m.add_sequence(5, kDense);
  ASSERT_TRUE(m.can_allocate(5, 16 * P));
  m.allocate(5, 16 * P);
  EXPECT_EQ(m.free_pages(), 0);
  EXPECT_EQ(m.cached_free_pages(), 0);
  m.release(5);
  EXPECT_EQ(m.add_sequence(6, kDense, k, 49), 0);  // evicted
}

TEST(KvCachePrefix, GeneratedTokensGivenToCommitAreCachedToo) {
  KvCacheManager m(kConfig, 64, true);
  const std::vector<int32_t> p = prompt(20);
  std::vector<int32_t> tokens = p;  // the prompt, then 30 generated tokens
  for (const int32_t t : prompt(30, 7000)) tokens.push_back(t);
  m.add_sequence(1, kDense, key(p), 19);
  m.allocate(1, 50);
  m.commit(1, 49, tokens);  // the last generated token's K/V are not computed: blocks 0 to 2
  m.commit(1, 49, tokens);  // again: nothing new
  m.release(1);
  EXPECT_EQ(m.cached_free_pages(), 12);
  // The next turn: the conversation so far, then more.
  std::vector<int32_t> next = tokens;
  next.push_back(9);
  EXPECT_EQ(m.add_sequence(2, kDense, key(next), std::ssize(next) - 1), 3 * P);
  m.release(2);
}

TEST(KvCachePrefix, StreamingLayoutsOtherProfilesAndNoCacheTakeNoPart) {
  KvCacheManager m(kConfig, 64, true);
  const auto k = key(prompt(40));
  m.add_sequence(1, kDense, k, 39);
  m.allocate(1, 40);
  m.commit(1, 40, k->tokens);
  EXPECT_EQ(m.add_sequence(2, kBalanced, key(prompt(40)), 39), 0);
  m.allocate(2, 40);
  m.commit(2, 40, k->tokens);  // no chain: nothing registered
  EXPECT_EQ(m.add_sequence(3, kDense, key(prompt(40), "other"), 39), 0);
  EXPECT_EQ(m.add_sequence(4, kDense, nullptr, 39), 0);
  EXPECT_EQ(m.add_sequence(5, kDense, k, 39), 2 * P);
  for (const uint64_t id : {1, 2, 3, 4, 5}) m.release(id);
  EXPECT_EQ(m.cached_free_pages(), 8);  // sequence 1's two blocks of four slots, nothing of 2's

  KvCacheManager off(kConfig, 64);
  EXPECT_FALSE(off.prefix_caching());
  off.add_sequence(1, kDense, k, 39);
  off.allocate(1, 40);
  off.commit(1, 40, k->tokens);
  off.release(1);
  EXPECT_EQ(off.add_sequence(2, kDense, k, 39), 0);
  EXPECT_EQ(off.free_pages(), 64);
}

TEST(KvCachePrefix, ABlockComputedTwiceKeepsTheFirstEntryAndTheChainGoesOn) {
  KvCacheManager m(kConfig, 64, true);
  const std::vector<int32_t> x = prompt(2 * P);
  std::vector<int32_t> xy = x;
  for (const int32_t t : prompt(2 * P + 1, 5000)) xy.push_back(t);
  m.add_sequence(1, kDense, key(x), 2 * P - 1);
  m.add_sequence(2, kDense, key(xy), 4 * P);  // added before 1 commits: computes x again
  m.allocate(1, 2 * P);
  m.allocate(2, 4 * P + 1);
  m.commit(1, 2 * P, x);
  m.commit(2, 4 * P + 1, xy);  // blocks 0, 1 are 1's entries; 2 and 3 chain on with 2's pages
  EXPECT_EQ(m.add_sequence(3, kDense, key(xy), 4 * P), 4 * P);
  EXPECT_EQ(block_pages(m, 3, 0), block_pages(m, 1, 0));
  EXPECT_EQ(block_pages(m, 3, 1), block_pages(m, 1, 1));
  EXPECT_EQ(block_pages(m, 3, 2), block_pages(m, 2, 2));
  EXPECT_EQ(block_pages(m, 3, 3), block_pages(m, 2, 3));
  m.release(1);
  m.release(2);  // its own copies of blocks 0 and 1 are freed, not cached
  EXPECT_EQ(m.used_pages(R), 16);
  m.release(3);
  EXPECT_EQ(m.cached_free_pages(), 16);
  EXPECT_EQ(m.free_pages(), 64);
}

TEST(KvCachePrefix, ABlockFoundCachedStaysWhileTheChainThatFoundItRuns) {
  KvCacheManager m(kConfig, 24, true);
  const std::vector<int32_t> x = prompt(3 * P);
  m.add_sequence(1, kDense, key(std::vector(x.begin(), x.begin() + P + 1)), P);
  m.add_sequence(2, kDense, key(x), 3 * P - 1);
  m.allocate(1, P + 1);  // 8 pages
  m.allocate(2, P);      // 4 pages: block 0 only so far
  m.commit(1, P + 1, x);
  m.commit(2, P, x);  // block 0 found as 1's entry: 2 keeps its own pages and uses the entry
  m.release(1);
  EXPECT_EQ(m.cached_free_pages(), 0);  // 2 still uses it
  EXPECT_EQ(m.free_pages(), 16);
  m.allocate(2, 3 * P);
  m.commit(2, 3 * P, x);  // blocks 1 and 2 chain on under 1's block 0
  m.release(2);           // its own block 0 is freed
  EXPECT_EQ(m.cached_free_pages(), 12);
  EXPECT_EQ(m.add_sequence(3, kDense, key(x), 3 * P), 3 * P);
  m.release(3);
  EXPECT_EQ(m.free_pages(), 24);
}

// Random sequences over prompts that share prefixes: every page a sequence adopts holds the K/V
// (here: the prefix the block ends) of the sequence's own prompt, pages never leak, and the counts
// agree with the tables.
TEST(KvCachePrefix, RandomOperationsShareOnlyPagesOfTheSamePrefix) {
  constexpr int32_t kPages = 96;
  KvCacheManager m(kConfig, kPages, true);
  std::mt19937 rng(20261203);
  std::map<int32_t, std::vector<int32_t>> content;  // page → the prefix its K/V were computed from
  struct Seq {
    std::vector<int32_t> prompt;
    int64_t computed = 0;
    bool streaming = false;
  };
  std::map<uint64_t, Seq> live;
  uint64_t next_id = 1;
  int64_t hits = 0;
  auto block_prefix = [](const std::vector<int32_t>& p, int64_t block) {
    return std::vector<int32_t>(p.begin(), p.begin() + (block + 1) * P);
  };
  for (int step = 0; step < 4000; ++step) {
    const int op = static_cast<int>(rng() % 4);
    if (op == 0 || live.empty()) {  // a new sequence: one of three stems, then random tokens
      Seq s;
      s.streaming = rng() % 5 == 0;
      const int32_t stem = static_cast<int32_t>(rng() % 3);
      const auto stem_len = static_cast<int32_t>(rng() % (3 * P));
      for (int32_t i = 0; i < stem_len; ++i) s.prompt.push_back(stem * 100 + i);
      const auto tail = static_cast<int32_t>(1 + rng() % (2 * P));
      for (int32_t i = 0; i < tail; ++i) s.prompt.push_back(static_cast<int32_t>(10000 + rng() % 4));
      const uint64_t id = next_id++;
      const int64_t len = std::ssize(s.prompt);
      s.computed = m.add_sequence(id, s.streaming ? kBalanced : kDense, key(s.prompt), len - 1);
      ASSERT_EQ(s.computed % P, 0);
      ASSERT_LT(s.computed, len);
      hits += s.computed > 0;
      for (int64_t b = 0; b < s.computed / P; ++b) {
        for (const int32_t page : block_pages(m, id, static_cast<int32_t>(b))) {
          ASSERT_EQ(content.at(page), block_prefix(s.prompt, b)) << "page " << page;
        }
      }
      live.emplace(id, std::move(s));
    } else if (op == 1 || op == 2) {  // a chunk of a live sequence, computed
      auto it = std::next(live.begin(), static_cast<long>(rng() % live.size()));
      Seq& s = it->second;
      const int64_t len = std::ssize(s.prompt);
      if (s.computed == len) continue;
      const int64_t to = std::min<int64_t>(len, s.computed + 1 + static_cast<int64_t>(rng() % (2 * P)));
      if (!m.can_allocate(it->first, to)) {
        m.release(it->first);
        live.erase(it);
        continue;
      }
      m.allocate(it->first, to);
      if (!s.streaming) {
        // New pages hold nothing yet: a page still registered or shared must never be handed out.
        const int64_t blocks = (to + P - 1) / P;
        for (int64_t b = (s.computed + P - 1) / P; b < blocks; ++b) {
          for (const int32_t page : block_pages(m, it->first, static_cast<int32_t>(b))) content[page] = {};
        }
        // "compute" the K/V of the full blocks the chunk completes
        for (int64_t b = s.computed / P; b < to / P; ++b) {
          for (const int32_t page : block_pages(m, it->first, static_cast<int32_t>(b))) {
            content[page] = block_prefix(s.prompt, b);
          }
        }
      }
      s.computed = to;
      m.commit(it->first, to, s.prompt);
    } else {
      auto it = std::next(live.begin(), static_cast<long>(rng() % live.size()));
      m.release(it->first);
      live.erase(it);
    }
    std::set<int32_t> held;
    int32_t streaming = 0;
    for (const auto& [id, s] : live) {
      const SequenceKv& kv = m.sequence(id);
      for (int32_t k = 0; k < kv.retrieval_slots(); ++k) held.insert(kv.retrieval_pages(k).begin(), kv.retrieval_pages(k).end());
      streaming += kv.pages_held(S);
    }
    ASSERT_EQ(m.used_pages(S), streaming);
    // Held pages, plus cached blocks a chain uses whose pages it computed again itself.
    ASSERT_GE(m.used_pages(R), std::ssize(held));
    ASSERT_EQ(m.free_pages() + m.used_pages(R) + m.used_pages(S), kPages);
  }
  EXPECT_GT(hits, 100);
  for (const auto& [id, s] : live) m.release(id);
  EXPECT_EQ(m.free_pages(), kPages);
  m.add_sequence(0, kDense);
  EXPECT_NO_THROW(m.allocate(0, int64_t{kPages} / 4 * P));  // every cached page taken back
  EXPECT_EQ(m.cached_free_pages(), 0);
}

}  // namespace
}  // namespace sparseserve::kvcache
