// KvCacheManager with prefix caching: a later sequence with the same prompt blocks shares the pages
// an earlier one computed; layouts with streaming slots adopt chains whose snapshots cover their
// window, through the copies the manager lists; other profiles and keys that do not match take no
// part; cached pages count as free and are taken back when the pool runs short; and, over random
// operations, a shared page always holds the K/V of the prefix that found it, and a streaming
// sequence's window always holds its own prefix's K/V.
#include "kvcache/kv_cache_manager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
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

// A dynamic prefill's chunks end on its query blocks: a shared prefix must too.
TEST(KvCachePrefix, AnAlignedSequenceAdoptsAMultipleOfItsAlignment) {
  KvCacheManager m(kConfig, 64, true);
  const auto k = key(prompt(100));
  m.add_sequence(1, kDense, k, 99);
  m.allocate(1, 100);
  m.commit(1, 100, k->tokens);  // 6 blocks
  // align (tokens) → the longest multiple of lcm(P, align) within the chain and the cap.
  for (const auto& [align, cap, want] : std::vector<std::array<int64_t, 3>>{
           {1, 99, 96}, {16, 99, 96}, {32, 99, 96}, {48, 99, 96}, {64, 99, 64}, {40, 99, 80},
           {128, 99, 0}, {8, 99, 96}, {32, 70, 64}, {48, 70, 48}, {64, 63, 0}}) {
    EXPECT_EQ(m.add_sequence(2, kDense, k, cap, align), want) << align << " " << cap;
    EXPECT_EQ(m.sequence(2).length(), want);
    m.release(2);
  }
  EXPECT_THROW(m.add_sequence(2, kDense, k, 99, 0), InternalError);
  EXPECT_FALSE(m.has_sequence(2));
  m.release(1);
  EXPECT_EQ(m.free_pages(), 64);
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

TEST(KvCachePrefix, OtherProfilesAndNoCacheTakeNoPart) {
  KvCacheManager m(kConfig, 64, true);
  const auto k = key(prompt(40));
  m.add_sequence(1, kDense, k, 39);
  m.allocate(1, 40);
  m.commit(1, 40, k->tokens);
  EXPECT_EQ(m.add_sequence(3, kDense, key(prompt(40), "other"), 39), 0);
  EXPECT_EQ(m.add_sequence(4, kDense, nullptr, 39), 0);
  EXPECT_EQ(m.add_sequence(5, kDense, k, 39), 2 * P);
  for (const uint64_t id : {1, 3, 4, 5}) m.release(id);
  EXPECT_EQ(m.cached_free_pages(), 8);  // sequence 1's two blocks of four slots
  EXPECT_TRUE(m.take_copies().empty());

  KvCacheManager off(kConfig, 64);
  EXPECT_FALSE(off.prefix_caching());
  off.add_sequence(1, kDense, k, 39);
  off.allocate(1, 40);
  off.commit(1, 40, k->tokens);
  off.release(1);
  EXPECT_EQ(off.add_sequence(2, kDense, k, 39), 0);
  EXPECT_EQ(off.free_pages(), 64);
}

// kBalanced: sink 4 tokens (1 page), local 20 (a ring of 3 pages), 2 streaming slots.
std::vector<PageCopy> sorted(std::vector<PageCopy> c) {
  std::ranges::sort(c, {}, [](const PageCopy& x) { return std::pair(x.dst, x.src); });
  return c;
}

TEST(KvCachePrefix, StreamingLayoutsAdoptTheLongestChainWhoseSnapshotsCoverTheWindow) {
  KvCacheManager m(kConfig, 64, true);
  const auto k = key(prompt(100), "balanced");  // 6 full blocks and 4 tokens
  EXPECT_EQ(m.add_sequence(1, kBalanced, k, 99), 0);
  m.allocate(1, 40);
  m.commit(1, 40, k->tokens);  // blocks 0 (sink) and 1 are whole in the ring: snapshots
  const SequenceKv& s1 = m.sequence(1);
  std::vector<PageCopy> want;
  std::vector<std::vector<int32_t>> snap(6);  // snapshot pages per block, slot order
  const std::vector<PageCopy> first = m.take_copies();
  ASSERT_EQ(first.size(), 4u);  // 2 blocks × 2 slots
  for (int32_t slot = 0; slot < 2; ++slot) {
    EXPECT_EQ(first[static_cast<size_t>(slot)].src, s1.streaming_pages(slot)[0]);  // block 0: the sink page
    EXPECT_EQ(first[static_cast<size_t>(2 + slot)].src, s1.streaming_pages(slot)[1]);  // block 1: ring index 1
    snap[0].push_back(first[static_cast<size_t>(slot)].dst);
    snap[1].push_back(first[static_cast<size_t>(2 + slot)].dst);
  }
  EXPECT_TRUE(m.take_copies().empty());
  // Snapshots only ever feed copies: evictable while sequence 1 runs.
  EXPECT_EQ(m.cached_free_pages(), 4);
  m.allocate(1, 100);
  // The chunk [40, 100) writes the ring from 52 on: blocks 4 and 5 are whole there, 2 and 3 are not.
  m.commit(1, 100, k->tokens);
  const std::vector<PageCopy> second = m.take_copies();
  ASSERT_EQ(second.size(), 4u);
  for (int32_t slot = 0; slot < 2; ++slot) {
    EXPECT_EQ(second[static_cast<size_t>(slot)].src, s1.streaming_pages(slot)[1]);      // block 4: index 1 + 3 % 3
    EXPECT_EQ(second[static_cast<size_t>(2 + slot)].src, s1.streaming_pages(slot)[2]);  // block 5: index 2
    snap[4].push_back(second[static_cast<size_t>(slot)].dst);
    snap[5].push_back(second[static_cast<size_t>(2 + slot)].dst);
  }

  // The same prompt: all 6 blocks (96 tokens). Its pages then hold sink block 0 and ring blocks 3, 4
  // and 5 (indices 3, 1, 2); a query at 96 attends from 77 on, so block 3 is zero-filled.
  const int32_t free_before = m.free_pages();
  EXPECT_EQ(m.add_sequence(2, kBalanced, k, 99), 6 * P);
  const SequenceKv& s2 = m.sequence(2);
  EXPECT_EQ(s2.pages_held(S), 8);
  EXPECT_EQ(m.free_pages(), free_before - 8 - 6);  // its ring pages; the snapshots its copies read
  for (int32_t b = 0; b < 6; ++b) EXPECT_EQ(block_pages(m, 2, b), block_pages(m, 1, b));
  want.clear();
  for (int32_t slot = 0; slot < 2; ++slot) {
    const auto& pages = s2.streaming_pages(slot);
    want.push_back({snap[0][static_cast<size_t>(slot)], pages[0], 0, P});
    want.push_back({snap[4][static_cast<size_t>(slot)], pages[1], 0, P});
    want.push_back({snap[5][static_cast<size_t>(slot)], pages[2], 0, P});
    want.push_back({-1, pages[3], 0, P});
  }
  EXPECT_EQ(sorted(m.take_copies()), sorted(want));
  EXPECT_EQ(m.free_pages(), free_before - 8);  // retrieval pages shared, snapshots evictable again
  m.release(2);

  // 70 shared tokens: 4 blocks match, but at 64 tokens the window (45 on) needs blocks 2 and 3, at 48
  // blocks 1 and 2; at 32 block 1 alone, which has a snapshot.
  std::vector<int32_t> other(k->tokens.begin(), k->tokens.begin() + 70);
  other.push_back(7);
  EXPECT_EQ(m.add_sequence(3, kBalanced, key(other, "balanced"), 70), 2 * P);
  const SequenceKv& s3 = m.sequence(3);
  want.clear();
  for (int32_t slot = 0; slot < 2; ++slot) {
    want.push_back({snap[0][static_cast<size_t>(slot)], s3.streaming_pages(slot)[0], 0, P});
    want.push_back({snap[1][static_cast<size_t>(slot)], s3.streaming_pages(slot)[1], 0, P});
  }
  // Released before its first step: its copies are dropped, the snapshots it pinned evictable again.
  m.release(3);
  EXPECT_TRUE(m.take_copies().empty());
  EXPECT_EQ(m.add_sequence(3, kBalanced, key(other, "balanced"), 70), 2 * P);
  EXPECT_EQ(sorted(m.take_copies()), sorted(want));
  m.release(3);
  // Aligned on 4 blocks: at 64 tokens the window needs blocks 2 and 3 (no snapshots), and no
  // shorter multiple but 0. On 2 blocks: all 6.
  EXPECT_EQ(m.add_sequence(4, kBalanced, k, 99, 4 * P), 0);
  m.release(4);
  EXPECT_EQ(m.add_sequence(4, kBalanced, k, 99, 2 * P), 6 * P);
  m.release(4);
  EXPECT_TRUE(m.take_copies().empty());
  m.release(1);
  EXPECT_EQ(m.free_pages(), 64);
  EXPECT_EQ(m.cached_free_pages(), 6 * 2 + 4 * 2);  // retrieval pages of 6 blocks, 4 snapshots
}

TEST(KvCachePrefix, AChunkWritesTheBlocksItOverwritesInTheRingIntoReservedSnapshots) {
  KvCacheManager m(kConfig, 64, true);
  const auto k = key(prompt(100), "balanced");
  m.add_sequence(1, kBalanced, k, 99);
  m.allocate(1, 40);
  m.reserve_snapshots(1, 0, 40);  // nothing: the ring (3 pages) holds all of [0, 40)
  EXPECT_EQ(m.snapshot_target(1, 1), nullptr);
  m.commit(1, 40, k->tokens);
  EXPECT_EQ(m.take_copies().size(), 4u);  // blocks 0 and 1 from the ring
  m.allocate(1, 100);
  // [40, 100) keeps [52, 100) in the ring: block 3 (48-63) is inside the chunk and its 48-51 are
  // never written there; block 2 (32-47) began before the chunk: its 32-39 are in the ring now, copied
  // before the step, its 40-47 never reach the ring. Blocks 4 and 5 stay whole.
  const int32_t free_before = m.free_pages();
  m.reserve_snapshots(1, 40, 100);
  EXPECT_THROW(m.reserve_snapshots(1, 40, 100), InternalError);  // once a step
  for (const int64_t b : {0, 1, 4, 5, 6}) EXPECT_EQ(m.snapshot_target(1, b), nullptr) << b;
  ASSERT_NE(m.snapshot_target(1, 2), nullptr);
  ASSERT_NE(m.snapshot_target(1, 3), nullptr);
  const std::vector<int32_t> reserved2 = *m.snapshot_target(1, 2), reserved = *m.snapshot_target(1, 3);
  EXPECT_EQ(reserved.size(), 2u);
  EXPECT_EQ(m.free_pages(), free_before - 4);
  const SequenceKv& s1 = m.sequence(1);
  // The engine's copies before the step: block 2's first 8 tokens from ring index 1 + 1 % 3.
  EXPECT_EQ(sorted(m.take_copies()), sorted({{s1.streaming_pages(0)[2], reserved2[0], 0, 8},
                                             {s1.streaming_pages(1)[2], reserved2[1], 0, 8}}));
  m.commit(1, 100, k->tokens);
  EXPECT_EQ(m.snapshot_target(1, 3), nullptr);
  // Blocks 4 and 5 from the ring; block 3's 52-63 from the ring (48-51 were written in place).
  std::vector<PageCopy> block3;
  for (const PageCopy& c : m.take_copies()) {
    EXPECT_NE(c.dst, reserved2[0]);  // block 2 is all in its snapshot already
    if (c.dst == reserved[0] || c.dst == reserved[1]) block3.push_back(c);
  }
  ASSERT_EQ(block3.size(), 2u);
  EXPECT_EQ(block3[0].offset, 4);
  EXPECT_EQ(block3[0].tokens, 12);
  EXPECT_EQ(block3[0].src, s1.streaming_pages(0)[3]);  // block 3: ring index 1 + 2 % 3
  EXPECT_EQ(m.free_pages(), free_before);  // every snapshot evictable
  // A prompt branching off at 70 tokens: at 64 its window (45 on) needs blocks 2 and 3.
  std::vector<int32_t> other(k->tokens.begin(), k->tokens.begin() + 70);
  other.push_back(7);
  EXPECT_EQ(m.add_sequence(2, kBalanced, key(other, "balanced"), 70), 4 * P);
  m.release(2);
  // Branching at 90: at 80 the window (61 on) needs blocks 3 and 4: block 3's reserved snapshot.
  std::vector<int32_t> at90(k->tokens.begin(), k->tokens.begin() + 90);
  at90.push_back(7);
  EXPECT_EQ(m.add_sequence(3, kBalanced, key(at90, "balanced"), 90), 5 * P);
  bool read_reserved = false;
  for (const PageCopy& c : m.take_copies()) read_reserved |= c.src == reserved[0];
  EXPECT_TRUE(read_reserved);
  m.release(3);
  // The same prompt again, from block 2 on: its blocks have snapshots, so nothing is reserved.
  m.add_sequence(5, kBalanced, k, 31);  // at most 2 blocks adopted
  m.take_copies();
  m.allocate(5, 100);
  m.reserve_snapshots(5, 32, 100);
  for (const int64_t b : {2, 3, 4, 5}) EXPECT_EQ(m.snapshot_target(5, b), nullptr) << b;
  m.release(5);
  // Reserved pages a step never registers (a sequence released before its commit) go back.
  m.add_sequence(4, kBalanced, key(prompt(100, 5000), "balanced"), 99);
  m.allocate(4, 100);
  m.reserve_snapshots(4, 0, 100);  // blocks 1, 2 and 3 (0 is the sink; 4 and 5 stay whole)
  for (const int64_t b : {1, 2, 3}) EXPECT_NE(m.snapshot_target(4, b), nullptr) << b;
  for (const int64_t b : {0, 4, 5}) EXPECT_EQ(m.snapshot_target(4, b), nullptr) << b;
  m.release(4);
  m.release(1);
  EXPECT_EQ(m.free_pages(), 64);
}

// A backend that fails its copies: the snapshots they were to fill are dropped, never matched.
TEST(KvCachePrefix, SnapshotsWhoseCopiesFailedAreDropped) {
  KvCacheManager m(kConfig, 64, true);
  const auto k = key(prompt(40), "balanced");
  m.add_sequence(1, kBalanced, k, 39);
  m.allocate(1, 40);
  m.commit(1, 40, k->tokens);
  const std::vector<PageCopy> copies = m.take_copies();
  ASSERT_EQ(copies.size(), 4u);
  m.copies_failed(copies);
  EXPECT_EQ(m.cached_free_pages(), 0);  // the entries are used; their snapshots are gone
  EXPECT_EQ(m.add_sequence(2, kBalanced, k, 39), 0);
  m.release(2);
  m.release(1);
  EXPECT_EQ(m.free_pages(), 64);
}

TEST(KvCachePrefix, SnapshotsGoBeforeAnythingASequenceNeedsAndOnlyWhenPagesAreFree) {
  // 16 pages: a 40-token sequence holds 3 pages per retrieval slot and 3 per streaming slot.
  const auto k = key(prompt(40), "balanced");
  {
    KvCacheManager m(kConfig, 16, true);
    m.add_sequence(1, kBalanced, k, 39);
    m.allocate(1, 40);
    EXPECT_EQ(m.free_pages(), 4);
    m.commit(1, 40, k->tokens);  // blocks 0 and 1: 4 snapshot pages, evictable
    EXPECT_EQ(m.take_copies().size(), 4u);
    EXPECT_EQ(m.free_pages(), 4);
    EXPECT_EQ(m.cached_free_pages(), 4);
    // A second sequence takes every free page: the snapshots go, sequence 1's entries stay.
    m.add_sequence(2, kDense);
    m.allocate(2, P);
    EXPECT_EQ(m.free_pages(), 0);
    // Without snapshots nothing covers a window: nothing is adopted, no copy is listed.
    EXPECT_EQ(m.add_sequence(3, kBalanced, k, 39), 0);
    EXPECT_TRUE(m.take_copies().empty());
    for (const uint64_t id : {1, 2, 3}) m.release(id);
    EXPECT_EQ(m.free_pages(), 16);
  }
  {
    KvCacheManager m(kConfig, 16, true);
    m.add_sequence(1, kBalanced, k, 39);
    m.allocate(1, 40);
    m.add_sequence(2, kDense);
    m.allocate(2, P);  // the last 4 pages
    m.commit(1, 40, k->tokens);  // registered without snapshots: no page to spare
    EXPECT_TRUE(m.take_copies().empty());
    EXPECT_EQ(m.cached_free_pages(), 0);
    m.release(2);
    m.release(1);
    EXPECT_EQ(m.cached_free_pages(), 4);  // the two blocks' retrieval pages alone
    EXPECT_EQ(m.add_sequence(3, kBalanced, k, 39), 0);
    m.release(3);
  }
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
  EXPECT_EQ(m.used_pages(R), 8 + 20);  // each sequence's own pages, none besides
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
  m.release(1);       // the entry moves onto 2's copy: 1's block 0 is freed with it
  EXPECT_EQ(m.cached_free_pages(), 0);  // 2 still uses it
  EXPECT_EQ(m.free_pages(), 20);
  m.allocate(2, 3 * P);
  m.commit(2, 3 * P, x);  // blocks 1 and 2 chain on under block 0's entry
  m.release(2);
  EXPECT_EQ(m.cached_free_pages(), 12);
  EXPECT_EQ(m.add_sequence(3, kDense, key(x), 3 * P), 3 * P);
  m.release(3);
  EXPECT_EQ(m.free_pages(), 24);
}

// A prompt cached by a sequence that has ended, computed again by one that adopts none of it (here
// no snapshot covers its window): its blocks' cached pages go back to the pool as it commits them,
// so it holds no more than its own pages and a pool that holds it alone holds it to the end. (They
// stayed pinned beside its copies: a lone request under a select profile, readmitted after each
// preemption, ran out of pages at the same length again and again.)
TEST(KvCachePrefix, ACachedPromptComputedAgainIsHeldOnce) {
  constexpr int32_t kPages = 2 * 6 + 2 * 3;  // 6 blocks of 2 retrieval lanes, 2 streaming lanes' ring of 3
  const SequenceLayout layout{2, 2, StreamingWindow{0, 2 * P}};
  KvCacheManager m(kConfig, kPages, true);
  const std::vector<int32_t> x = prompt(6 * P);
  const auto k = key(x, "balanced");
  ASSERT_EQ(m.add_sequence(1, layout, k, 6 * P - 1), 0);
  ASSERT_TRUE(m.can_allocate(1, 6 * P));
  m.allocate(1, 6 * P);
  m.commit(1, 6 * P, x);
  m.take_copies();
  m.release(1);
  EXPECT_EQ(m.free_pages(), kPages);  // the blocks are cached, their pages free to take
  EXPECT_GT(m.cached_free_pages(), 0);
  ASSERT_EQ(m.add_sequence(2, layout, k, 0), 0);  // computes it all again, block by block (decode-like)
  for (int64_t n = 1; n <= 6 * P; ++n) {
    ASSERT_TRUE(m.can_allocate(2, n)) << n;
    m.allocate(2, n);
    m.commit(2, n, x);
    m.take_copies();
    ASSERT_EQ(m.used_pages(R), m.sequence(2).pages_held(R)) << n;
    ASSERT_EQ(m.free_pages(), kPages - m.sequence(2).pages_held()) << n;
  }
  m.release(2);
  EXPECT_EQ(m.free_pages(), kPages);
}

// Random sequences over prompts that share prefixes, half of them with streaming slots. A model of
// the backend stores K/V (here: the prefix a position ends) as the runners do: retrieval pages per
// block, streaming pages per position (sink positions always, a chunk's last ring_pages pages of
// positions into the ring, the others into the snapshots reserved for their blocks) and the
// manager's copies right after each add and commit. Checked: every
// page a sequence adopts holds the K/V of its own prompt's prefix, every position a streaming
// sequence's next query attends holds its own prefix's K/V, pages never leak, and the counts agree
// with the tables.
TEST(KvCachePrefix, RandomOperationsShareOnlyPagesOfTheSamePrefix) {
  constexpr int32_t kPages = 96;
  KvCacheManager m(kConfig, kPages, true);
  std::mt19937 rng(20261203);
  using Prefix = std::vector<int32_t>;
  std::map<int32_t, Prefix> content;                 // retrieval page → the prefix its block ends
  std::map<int32_t, std::vector<Prefix>> positions;  // streaming page → per offset, the prefix there
  struct Seq {
    std::vector<int32_t> prompt;
    int64_t computed = 0;
    bool streaming = false;
  };
  std::map<uint64_t, Seq> live;
  uint64_t next_id = 1;
  int64_t hits = 0, streaming_hits = 0;
  auto prefix_to = [](const std::vector<int32_t>& p, int64_t end) { return Prefix(p.begin(), p.begin() + end); };
  // What a page handed out holds before anything is written (a zero fill leaves Prefix{}).
  const Prefix kGarbage{-1};
  auto garbage_page = [&] { return std::vector<Prefix>(P, kGarbage); };
  auto run_copies = [&] {
    for (const PageCopy& c : m.take_copies()) {
      std::vector<Prefix>& to = positions[c.dst];
      to.resize(P);
      for (int32_t t = c.offset; t < c.offset + c.tokens; ++t) {
        to[static_cast<size_t>(t)] = c.src < 0 ? Prefix{} : positions.at(c.src).at(static_cast<size_t>(t));
      }
    }
  };
  // The positions the next query (at s.computed) attends (DESIGN.md §5) hold the sequence's own K/V;
  // the others the kernels read (the sink blocks, the ring's blocks) are masked, but never garbage.
  auto check_window = [&](uint64_t id, const Seq& s) {
    const SequenceKv& kv = m.sequence(id);
    const StreamingGeometry& g = *kv.streaming_geometry();
    const int64_t t = s.computed;
    const int64_t last = (t - 1) / P;
    for (int32_t slot = 0; slot < kv.streaming_slots(); ++slot) {
      for (int64_t j = 0; j < t; ++j) {
        const int64_t b = j / P;
        if (b >= g.sink_pages() && b <= last - g.ring_pages()) continue;  // not read
        const int32_t page = kv.streaming_pages(slot)[static_cast<size_t>(g.locate(j).index)];
        const Prefix& held = positions[page].at(static_cast<size_t>(j % P));
        if (g.attends(t, j)) {
          ASSERT_EQ(held, prefix_to(s.prompt, j + 1)) << "sequence " << id << " position " << j << " of " << t;
        } else {
          ASSERT_NE(held, kGarbage) << "sequence " << id << " reads garbage at " << j << " of " << t;
        }
      }
    }
  };
  for (int step = 0; step < 4000; ++step) {
    const int op = static_cast<int>(rng() % 4);
    if (op == 0 || live.empty()) {  // a new sequence: one of three stems, then random tokens
      Seq s;
      s.streaming = rng() % 2 == 0;
      const int32_t stem = static_cast<int32_t>(rng() % 3);
      const auto stem_len = static_cast<int32_t>(rng() % (6 * P));
      for (int32_t i = 0; i < stem_len; ++i) s.prompt.push_back(stem * 100 + i);
      const auto tail = static_cast<int32_t>(1 + rng() % (2 * P));
      for (int32_t i = 0; i < tail; ++i) s.prompt.push_back(static_cast<int32_t>(10000 + rng() % 4));
      const uint64_t id = next_id++;
      const int64_t len = std::ssize(s.prompt);
      // Some aligned on their blocks (a dynamic prefill's), and each previewed first: the preview
      // changes nothing and says what the registration then does.
      const int64_t align = std::array<int64_t, 4>{1, 1, 2 * P, 3 * P}[rng() % 4];
      const SequenceLayout& layout = s.streaming ? kBalanced : kDense;
      const auto k = key(s.prompt, s.streaming ? "balanced" : "dense");
      const int32_t free_before = m.free_pages(), cached_before = m.cached_free_pages();
      const KvCacheManager::AdoptionPreview view = m.preview_sequence(layout, k, len - 1, align);
      ASSERT_EQ(m.free_pages(), free_before);
      ASSERT_EQ(m.cached_free_pages(), cached_before);
      s.computed = m.add_sequence(id, layout, k, len - 1, align);
      const SequenceKv& added = m.sequence(id);
      ASSERT_EQ(s.computed, view.cached_tokens) << "step " << step;
      ASSERT_EQ(added.pages_held(), view.pages_held) << "step " << step;
      ASSERT_EQ(m.free_pages(), view.free_pages) << "step " << step;
      for (const int64_t more : {int64_t{1}, int64_t{P}, len, int64_t{7 * P + 3}}) {
        ASSERT_EQ(m.pages_needed(id, s.computed + more), view.pages_needed(s.computed + more)) << "step " << step;
      }
      ASSERT_EQ(s.computed % align, 0);
      for (int32_t slot = 0; slot < added.streaming_slots(); ++slot) {
        for (const int32_t page : added.streaming_pages(slot)) positions[page] = garbage_page();
      }
      run_copies();
      ASSERT_EQ(s.computed % P, 0);
      ASSERT_LT(s.computed, len);
      hits += s.computed > 0;
      streaming_hits += s.streaming && s.computed > 0;
      for (int64_t b = 0; b < s.computed / P; ++b) {
        for (const int32_t page : block_pages(m, id, static_cast<int32_t>(b))) {
          ASSERT_EQ(content.at(page), prefix_to(s.prompt, (b + 1) * P)) << "page " << page;
        }
      }
      if (s.streaming) check_window(id, s);
      live.emplace(id, std::move(s));
    } else if (op == 1 || op == 2) {  // a chunk of a live sequence, computed (a third of them one token)
      auto it = std::next(live.begin(), static_cast<long>(rng() % live.size()));
      Seq& s = it->second;
      const uint64_t id = it->first;
      const int64_t len = std::ssize(s.prompt);
      if (s.computed == len) continue;
      const int64_t more = rng() % 3 == 0 ? 0 : static_cast<int64_t>(rng() % (5 * P));
      const int64_t to = std::min<int64_t>(len, s.computed + 1 + more);
      if (!m.can_allocate(id, to)) {
        m.release(id);
        live.erase(it);
        continue;
      }
      const SequenceKv& kv = m.sequence(id);
      std::vector<size_t> had;
      for (int32_t slot = 0; slot < kv.streaming_slots(); ++slot) had.push_back(kv.streaming_pages(slot).size());
      m.allocate(id, to);
      m.reserve_snapshots(id, s.computed, to);
      // New pages hold garbage: a page still registered, shared or snapshotted must never be
      // handed out.
      for (int64_t b = 0; b <= to / P; ++b) {
        if (const std::vector<int32_t>* reserved = m.snapshot_target(id, b)) {
          ASSERT_GE((b + 1) * P, s.computed);
          for (const int32_t page : *reserved) positions[page] = garbage_page();
        }
      }
      for (int64_t b = (s.computed + P - 1) / P; b < (to + P - 1) / P; ++b) {
        for (const int32_t page : block_pages(m, id, static_cast<int32_t>(b))) content[page] = {};
      }
      for (int32_t slot = 0; slot < kv.streaming_slots(); ++slot) {
        const auto& pages = kv.streaming_pages(slot);
        for (size_t i = had[static_cast<size_t>(slot)]; i < pages.size(); ++i) positions[pages[i]] = garbage_page();
      }
      run_copies();  // as the engine runs them before each step (the reservations stay)
      // "compute" the chunk: full blocks of retrieval pages; streaming positions as the runners
      // write them (after the chunk's attention: only what the ring keeps, and sink positions).
      for (int64_t b = s.computed / P; b < to / P; ++b) {
        for (const int32_t page : block_pages(m, id, static_cast<int32_t>(b))) content[page] = prefix_to(s.prompt, (b + 1) * P);
      }
      if (s.streaming) {
        const StreamingGeometry& g = *kv.streaming_geometry();
        const int64_t keep_from = std::max<int64_t>(s.computed, to - int64_t{g.ring_pages()} * P);
        for (int64_t p = s.computed; p < to; ++p) {
          const std::vector<int32_t>* reserved = m.snapshot_target(id, p / P);
          const bool ring = p >= keep_from || p < int64_t{g.sink_pages()} * P;
          if (!ring && reserved == nullptr) continue;
          for (int32_t slot = 0; slot < kv.streaming_slots(); ++slot) {
            const int32_t page = ring ? kv.streaming_pages(slot)[static_cast<size_t>(g.locate(p).index)]
                                      : (*reserved)[static_cast<size_t>(slot)];
            positions[page][static_cast<size_t>(p % P)] = prefix_to(s.prompt, p + 1);
          }
        }
      }
      s.computed = to;
      m.commit(id, to, s.prompt);
      run_copies();
      if (s.streaming) check_window(id, s);
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
  EXPECT_GT(streaming_hits, 30);
  for (const auto& [id, s] : live) m.release(id);
  EXPECT_EQ(m.free_pages(), kPages);
  m.add_sequence(0, kDense);
  EXPECT_NO_THROW(m.allocate(0, int64_t{kPages} / 4 * P));  // every cached page taken back
  EXPECT_EQ(m.cached_free_pages(), 0);
}

}  // namespace
}  // namespace sparseserve::kvcache
