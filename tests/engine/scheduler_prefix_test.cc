// Scheduling with prefix caching: admissions start from a prompt's cached blocks (on a dynamic
// prefill's blocks when aligned), pages a request would adopt count against the pool, and a request
// the pages block changes nothing in the cache (tests/engine/scheduler_harness.h).
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <vector>

#include "common/errors.h"
#include "kvcache/kv_cache_manager.h"
#include "tests/engine/scheduler_harness.h"

namespace sparseserve {
namespace {

using namespace scheduler_testing;

std::shared_ptr<const kvcache::PrefixKey> prompt_key(int64_t n, int32_t first = 100) {
  auto k = std::make_shared<kvcache::PrefixKey>();
  k->profile = "dense";
  for (int64_t i = 0; i < n; ++i) k->tokens.push_back(first + static_cast<int32_t>(i));
  return k;
}

TEST(Scheduler, ARequestStartsFromItsPromptsCachedBlocksAndComputesItsLastToken) {
  Harness h(SchedulerConfig{.max_num_seqs = 4, .max_num_batched_tokens = 64}, 64, true);
  h.add(1, 100, 3, dense_layout(), 0, {}, prompt_key(100));
  ASSERT_TRUE(h.run(50));
  h.add(2, 100, 2, dense_layout(), 0, {}, prompt_key(100));
  StepPlan plan = h.step();
  ASSERT_EQ(plan.seqs.size(), 1u);
  EXPECT_EQ(chunks(plan.seqs), std::vector<Chunk>({{96, 4, true, true}}));  // 6 blocks cached
  ASSERT_TRUE(h.run(50));
  // A prompt of exactly two blocks: the second is computed again for the last token's logits.
  h.add(3, 32, 1, dense_layout(), 0, {}, prompt_key(32));
  EXPECT_EQ(chunks(h.step().seqs), std::vector<Chunk>({{16, 16, true, true}}));
  // Other profiles (one with streaming slots), a key that must not match: from nothing.
  auto other = std::make_shared<kvcache::PrefixKey>(*prompt_key(100));
  other->profile = "select";
  h.add(4, 100, 1, dense_layout(), 0, {}, other);
  auto balanced = std::make_shared<kvcache::PrefixKey>(*prompt_key(100));
  balanced->profile = "balanced";
  h.add(5, 100, 1, mixed_layout(), 0, {}, balanced);
  auto no_match = std::make_shared<kvcache::PrefixKey>(*prompt_key(100));
  no_match->match = false;
  h.add(6, 100, 1, dense_layout(), 0, {}, no_match);
  ASSERT_TRUE(h.run(50));
  for (const uint64_t id : {4, 5, 6}) EXPECT_EQ(h.history.at(id).front().start, 0) << id;
  EXPECT_EQ(h.kv.free_pages(), h.kv.num_pages());
  EXPECT_GT(h.kv.cached_free_pages(), 0);
}

// The engine gives a preempted request a longer key (its answer so far too): the next admission looks
// that one up. Only a waiting request's key can change.
TEST(Scheduler, AWaitingRequestLooksUpTheKeyItWasLastGiven) {
  Harness h(SchedulerConfig{.max_num_seqs = 4, .max_num_batched_tokens = 128}, 64, true);
  h.add(1, 100, 1, dense_layout(), 0, {}, prompt_key(100));
  ASSERT_TRUE(h.run(10));
  h.add(2, 100, 1, dense_layout(), 0, {}, prompt_key(100, 500));  // other tokens: nothing cached
  const auto key = prompt_key(100);
  h.sched.set_prefix(2, key);
  h.tokens[2] = key->tokens;
  EXPECT_EQ(chunks(h.step().seqs), std::vector<Chunk>({{96, 4, true, true}}));
  EXPECT_THROW(h.sched.set_prefix(3, key), InternalError);
  h.add(3, 100, 2, dense_layout(), 0, {}, key);
  h.step();
  EXPECT_THROW(h.sched.set_prefix(3, key), InternalError);  // running
  ASSERT_TRUE(h.run(10));
}

// The pages a request adopts from the prefix cache fill the pool as well: a prompt that needs more
// than the whole pool is unservable whatever share of it is cached (else it would block the queue).
TEST(Scheduler, APromptLargerThanThePoolIsUnservableWithItsCachedBlocks) {
  Harness h(SchedulerConfig{.max_num_seqs = 4, .max_num_batched_tokens = 64}, 8, true);  // 4 blocks of 2 lanes
  h.add(1, 33, 1, dense_layout(), 0, {}, prompt_key(33));  // leaves blocks 0 and 1 cached
  ASSERT_TRUE(h.run(10));
  EXPECT_EQ(h.kv.cached_free_pages(), 4);
  h.add(2, 70, 1, dense_layout(), 0, {}, prompt_key(70));  // 5 blocks: 10 pages
  h.add(3, 20, 1, dense_layout(), 0, {}, prompt_key(20, 900));
  ASSERT_TRUE(h.run(10));
  EXPECT_EQ(h.unservable, std::vector<uint64_t>{2});
  EXPECT_EQ(h.finished, (std::vector<uint64_t>{1, 3}));
}

// A request the pages block changes nothing: its streaming ring would need pages the pool has
// only by evicting cached blocks, which it must not evict for an admission that does not happen.
TEST(Scheduler, ARequestThePagesBlockEvictsNoCachedBlock) {
  Harness h(SchedulerConfig{.max_num_seqs = 4, .max_num_batched_tokens = 64}, 32, true);
  auto balanced = [](int64_t n) {
    auto k = std::make_shared<kvcache::PrefixKey>(*prompt_key(n));
    k->profile = "balanced";
    return k;
  };
  h.add(1, 64, 1, mixed_layout(), 0, {}, balanced(64));  // 4 blocks: retrieval pages and snapshots
  ASSERT_TRUE(h.run(10));
  const int32_t cached = h.kv.cached_free_pages();
  ASSERT_EQ(cached, 8);  // 4 retrieval pages, 4 snapshots
  h.add(2, 160, 6, dense_layout(), 0, {}, nullptr);  // 22 pages once decoding: the pool keeps 2 free
  while (h.live.at(2).generated < 2) h.step();
  ASSERT_EQ(h.kv.free_pages() - h.kv.cached_free_pages(), 2);
  ASSERT_EQ(h.kv.cached_free_pages(), cached);
  // The same 64 tokens and 100 more: 4 blocks cached, its ring 3 fresh pages (only 2 are free
  // without evicting); 7 more retrieval pages for its prompt, which the pool does not have.
  h.add(3, 164, 1, mixed_layout(), 0, {}, balanced(164));
  for (int i = 0; i < 3; ++i) {
    const StepPlan plan = h.step();
    ASSERT_EQ(plan.seqs.size(), 1u);
    EXPECT_EQ(plan.seqs[0].id, 2u);
    EXPECT_EQ(h.kv.cached_free_pages(), cached) << "step " << i;
    EXPECT_EQ(h.sched.num_waiting(), 1u);
  }
  ASSERT_TRUE(h.run(20));
  EXPECT_EQ(h.history.at(3).front().start, 64);  // admitted once 2 finished, from its cached prefix
}

// A cached prefix never keeps out a request the pool holds from nothing. Adopting one under
// streaming heads pins the snapshots the ring copies from and takes the ring's pages at once: here
// that leaves too few pages for the rest of the prompt, though the whole, idle pool holds it. With
// nothing running, nothing would ever change: it is admitted without its prefix.
TEST(Scheduler, ACachedPrefixNeverBlocksARequestThePoolHoldsWithoutIt) {
  Harness h(SchedulerConfig{.max_num_seqs = 4, .max_num_batched_tokens = 64}, 9, true);
  auto balanced = [](int64_t n) {
    auto k = std::make_shared<kvcache::PrefixKey>(*prompt_key(n));
    k->profile = "balanced";
    return k;
  };
  h.add(1, 64, 1, mixed_layout(), 0, {}, balanced(64));  // leaves blocks 0-3 cached, with snapshots
  ASSERT_TRUE(h.run(10));
  ASSERT_EQ(h.kv.free_pages(), 9);
  ASSERT_GT(h.kv.cached_free_pages(), 4);
  // 80 tokens and one generated: 6 retrieval pages and 3 streaming ones, the whole pool. From the 4
  // cached blocks: their 4 retrieval pages, 2 snapshots pinned and 3 fresh ring pages leave 0 free
  // for the last retrieval block, while the adoption holds them.
  h.add(2, 80, 1, mixed_layout(), 0, {}, balanced(80));
  const kvcache::KvCacheManager::AdoptionPreview adopting = h.kv.preview_sequence(mixed_layout(), balanced(80), 79, 1);
  ASSERT_GT(adopting.cached_tokens, 0);
  ASSERT_GT(adopting.pages_needed(80), adopting.free_pages) << "adopting blocks it";
  ASSERT_TRUE(h.run(20)) << "blocked with nothing running";
  EXPECT_EQ(h.finished, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(h.history.at(2).front().start, 0);
  EXPECT_EQ(h.kv.free_pages(), 9);
}

// A dynamic prefill's chunks end on its blocks (ChunkRule::prompt_block): so does a cached prefix it
// starts from, and its chunks after it.
TEST(Scheduler, AnAlignedRequestStartsFromTheLongestCachedPrefixOnItsBlocks) {
  Harness h(SchedulerConfig{.max_num_seqs = 4, .max_num_batched_tokens = 64}, 64, true);
  h.add(1, 60, 1, dense_layout(), 0, {}, prompt_key(60));  // blocks 0 to 2 (48 tokens) cached
  ASSERT_TRUE(h.run(10));
  using Case = std::array<int64_t, 3>;  // {id, prompt_block, start}
  for (const auto& [id, block, start] : std::vector<Case>{{2, 32, 32}, {3, 48, 48}, {4, 64, 0}, {5, 8, 48}}) {
    const ChunkRule rule{.prompt_block = static_cast<int32_t>(block)};
    h.add(static_cast<uint64_t>(id), 60, 1, dense_layout(), 0, rule, prompt_key(60));
    ASSERT_TRUE(h.run(10));
    EXPECT_EQ(chunks(h.history.at(static_cast<uint64_t>(id))).front(), (Chunk{start, 60 - start, true, true})) << id;
  }
  // At most the prompt less its last token (47: 2 blocks), then down to the rule's block.
  h.add(6, 48, 1, dense_layout(), 0, ChunkRule{.prompt_block = 32}, prompt_key(48));
  h.add(7, 48, 1, dense_layout(), 0, ChunkRule{.prompt_block = 48}, prompt_key(48));
  ASSERT_TRUE(h.run(10));
  EXPECT_EQ(h.history.at(6).front().start, 32);
  EXPECT_EQ(h.history.at(7).front().start, 0);
  // A chunk after the cached prefix ends on a block too: 96 of 200 tokens cached (a multiple of 32),
  // a budget of 40: [96, 128), then [128, 160).
  Harness small(SchedulerConfig{.max_num_seqs = 4, .max_num_batched_tokens = 40}, 64, true);
  small.add(1, 100, 1, dense_layout(), 0, {}, prompt_key(100));
  ASSERT_TRUE(small.run(10));
  small.add(2, 200, 1, dense_layout(), 0, ChunkRule{.prompt_block = 32}, prompt_key(200));
  ASSERT_TRUE(small.run(20));
  const std::vector<ScheduledSeq>& two = small.history.at(2);
  EXPECT_EQ(chunks(two).front(), (Chunk{96, 32, false, true}));
  EXPECT_EQ(chunks(two).at(1), (Chunk{128, 32, false, false}));
}

}  // namespace
}  // namespace sparseserve
