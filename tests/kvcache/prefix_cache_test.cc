// PrefixCache: chains matched by exact tokens under one profile, entries in use never evicted,
// eviction least recently released first (a chain's last block first), serials never reused;
// snapshots evictable alone unless pinned.
#include "kvcache/prefix_cache.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "common/errors.h"

namespace sparseserve::kvcache {
namespace {

constexpr int32_t P = 4;

std::vector<int32_t> iota_tokens(int32_t n, int32_t first) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}

// Registers the blocks of `tokens` as one sequence would, each with `lanes` fresh pages (the
// sequence's own reference is dropped at once: the pages are then the cache's alone).
std::vector<PrefixCache::Serial> register_chain(PrefixCache& c, PagePool& pool, const std::string& profile,
                                                const std::vector<int32_t>& tokens, int32_t lanes) {
  std::vector<PrefixCache::Serial> chain;
  PrefixCache::Serial parent = 0;
  for (size_t b = 0; b + P <= tokens.size(); b += P) {
    const std::vector<int32_t> pages = pool.allocate(lanes);
    parent = c.insert(profile, parent, std::span(tokens).subspan(b, P), pages, pool);
    pool.release(pages);
    chain.push_back(parent);
  }
  return chain;
}

TEST(PrefixCache, MatchesTheLongestChainOfEqualBlocksUnderOneProfile) {
  PagePool pool(64);
  PrefixCache c(P);
  const std::vector<int32_t> tokens = iota_tokens(14, 100);  // 3 full blocks and 2 tokens
  const auto chain = register_chain(c, pool, "dense", tokens, 2);
  ASSERT_EQ(chain.size(), 3u);
  EXPECT_EQ(c.match("dense", tokens, 10), chain);
  EXPECT_EQ(c.match("dense", tokens, 2), std::vector(chain.begin(), chain.begin() + 2));
  EXPECT_TRUE(c.match("balanced", tokens, 10).empty());  // another profile's K/V differ
  std::vector<int32_t> other = tokens;
  other[9] = 7;  // block 2 differs
  EXPECT_EQ(c.match("dense", other, 10), std::vector(chain.begin(), chain.begin() + 2));
  other[0] = 7;  // block 0 differs: nothing, though blocks 1 and 2 hold the same tokens
  EXPECT_TRUE(c.match("dense", other, 10).empty());
  // A block is found by its parent too: block 1's tokens at the start match nothing.
  EXPECT_TRUE(c.match("dense", std::vector(tokens.begin() + 4, tokens.end()), 10).empty());
  EXPECT_EQ(c.find("dense", chain[0], std::span(tokens).subspan(4, 4)), chain[1]);
  EXPECT_EQ(c.find("dense", 0, std::span(tokens).subspan(4, 4)), 0u);
  EXPECT_EQ(c.pages(chain[2]).size(), 2u);
  EXPECT_THROW(c.insert("dense", chain[0], std::span(tokens).subspan(4, 4), pool.allocate(2), pool), InternalError);
  EXPECT_THROW(c.insert("dense", 0, std::span(tokens).subspan(0, 3), pool.allocate(2), pool), InternalError);
}

TEST(PrefixCache, EntriesInUseAreNeverEvictedAndFreedOnesGoLastBlockFirst) {
  PagePool pool(12);
  PrefixCache c(P);
  const std::vector<int32_t> a = iota_tokens(8, 0), b = iota_tokens(8, 50);
  // Each chain registered by a "sequence" that holds its pages as well.
  auto hold = [&](const std::vector<int32_t>& tokens) {
    std::vector<PrefixCache::Serial> chain;
    std::vector<int32_t> held;
    PrefixCache::Serial parent = 0;
    for (size_t i = 0; i < tokens.size(); i += P) {
      const std::vector<int32_t> pages = pool.allocate(3);
      held.insert(held.end(), pages.begin(), pages.end());
      parent = c.insert("dense", parent, std::span(tokens).subspan(i, P), pages, pool);
      chain.push_back(parent);
    }
    return std::pair(chain, held);
  };
  const auto [ca, ha] = hold(a);
  const auto [cb, hb] = hold(b);
  EXPECT_EQ(pool.num_free(), 0);
  EXPECT_EQ(c.evictable_pages(), 0);
  c.evict_until_free(3, pool);  // everything in use: nothing goes
  EXPECT_EQ(c.size(), 4u);
  pool.release(ha);  // sequence a ends: its blocks are the cache's alone
  c.release(ca);
  EXPECT_EQ(c.evictable_pages(), 6);
  EXPECT_EQ(pool.num_free(), 0);
  c.evict_until_free(3, pool);  // a's last block goes first
  EXPECT_EQ(pool.num_free(), 3);
  EXPECT_EQ(c.match("dense", a, 2), std::vector{ca[0]});
  EXPECT_EQ(c.evictable_pages(), 3);
  // A new user takes a's first block out of the evictable list again.
  c.acquire(ca[0]);
  EXPECT_EQ(c.evictable_pages(), 0);
  c.evict_until_free(6, pool);
  EXPECT_EQ(pool.num_free(), 3);
  EXPECT_EQ(c.size(), 3u);
  c.release(std::vector{ca[0]});
  pool.release(hb);
  c.release(cb);
  // Released in the order a[0], then b (last block first): a[0] is evicted before b's blocks.
  c.evict_until_free(6, pool);
  EXPECT_TRUE(c.match("dense", a, 2).empty());
  EXPECT_EQ(c.match("dense", b, 2).size(), 2u);
  c.evict_until_free(12, pool);
  EXPECT_EQ(pool.num_free(), 12);
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.evictable_pages(), 0);
  EXPECT_THROW(c.release(std::vector{ca[0]}), InternalError);
}

TEST(PrefixCache, AChainNeverLinksToAnEvictedParentsSuccessor) {
  PagePool pool(8);
  PrefixCache c(P);
  const std::vector<int32_t> tokens = iota_tokens(8, 0);
  const auto chain = register_chain(c, pool, "dense", tokens, 1);
  // Released one at a time, the first block first: it is evicted alone, its child stays.
  c.release(std::vector{chain[0]});
  c.release(std::vector{chain[1]});
  c.evict_until_free(7, pool);
  EXPECT_EQ(c.size(), 1u);
  EXPECT_TRUE(c.contains(chain[1]));
  const auto again = register_chain(c, pool, "dense", std::vector(tokens.begin(), tokens.begin() + 4), 1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_NE(again[0], chain[0]);  // a new serial
  EXPECT_EQ(c.match("dense", tokens, 2), again);  // the old child names the evicted serial
}

TEST(PrefixCache, SnapshotsAreEvictableWhileTheirEntryIsUsedUnlessPinned) {
  PagePool pool(8);
  PrefixCache c(P);
  const std::vector<int32_t> tokens = iota_tokens(8, 0);
  const auto chain = register_chain(c, pool, "balanced", tokens, 1);  // used by its registrant
  c.set_snapshot(chain[0], pool.allocate(2));
  c.set_snapshot(chain[1], pool.allocate(2));
  const std::vector<int32_t> extra = pool.allocate(1);
  EXPECT_THROW(c.set_snapshot(chain[1], extra), InternalError);  // one per entry
  pool.release(extra);
  EXPECT_EQ(pool.num_free(), 2);
  EXPECT_EQ(c.evictable_pages(), 4);  // the snapshots alone: the entries are used
  c.pin(chain[0]);                    // a copy reads it
  EXPECT_EQ(c.evictable_pages(), 2);
  c.evict_until_free(8, pool);  // chain[1]'s snapshot goes; the entries and the pinned one stay
  EXPECT_EQ(pool.num_free(), 4);
  EXPECT_EQ(c.size(), 2u);
  EXPECT_TRUE(c.snapshot(chain[1]).empty());
  EXPECT_EQ(c.snapshot(chain[0]).size(), 2u);
  EXPECT_THROW(c.pin(chain[1]), InternalError);
  EXPECT_THROW(c.drop_snapshot(chain[0], pool), InternalError);  // pinned
  c.unpin(chain[0]);
  EXPECT_THROW(c.unpin(chain[0]), InternalError);
  // Released, an entry goes whole, its snapshot with it.
  c.release(chain);
  EXPECT_EQ(c.evictable_pages(), 4);
  c.evict_until_free(8, pool);
  EXPECT_EQ(pool.num_free(), 8);
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.evictable_pages(), 0);
  // A snapshot whose copy never ran is dropped, its entry kept.
  const auto again = register_chain(c, pool, "balanced", std::vector(tokens.begin(), tokens.begin() + 4), 1);
  c.set_snapshot(again[0], pool.allocate(3));
  c.drop_snapshot(again[0], pool);
  EXPECT_TRUE(c.snapshot(again[0]).empty());
  EXPECT_EQ(pool.num_free(), 7);
  EXPECT_EQ(c.evictable_pages(), 0);
}

// A profile without retrieval lanes registers entries without pages (its snapshots hold the K/V):
// released, they are evictable like any other, in their turn, or they would stay forever.
TEST(PrefixCache, EntriesWithoutPagesAreEvictedInTheirTurn) {
  PagePool pool(2);
  PrefixCache c(P);
  const auto bare = register_chain(c, pool, "streaming", iota_tokens(8, 0), 0);
  c.release(bare);
  const auto dense = register_chain(c, pool, "dense", iota_tokens(4, 0), 1);
  c.release(dense);
  EXPECT_EQ(c.size(), 3u);
  EXPECT_EQ(c.evictable_pages(), 1);
  const std::vector<int32_t> held = pool.allocate(1);  // the pool's last free page
  c.evict_until_free(1, pool);  // the bare entries were released first: they go before the dense one
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(pool.num_free(), 1);
  pool.release(held);
}

TEST(PrefixCache, AFailedInsertTakesNoReference) {
  PagePool pool(4);
  PrefixCache c(P);
  const std::vector<int32_t> pages = pool.allocate(2);
  const std::vector<int32_t> block = iota_tokens(P, 0);
  // Page 3 is free: retaining it fails, and page pages[0]'s reference is given back.
  EXPECT_THROW(c.insert("dense", 0, block, std::vector{pages[0], 3}, pool), InternalError);
  EXPECT_EQ(pool.ref_count(pages[0]), 1);
  EXPECT_EQ(c.size(), 0u);
}

}  // namespace
}  // namespace sparseserve::kvcache
