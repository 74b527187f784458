// Scheduling without prefix caching (chunks, admission, preemption, priorities, unservable
// requests) and random stress runs, through tests/engine/scheduler_harness.h.
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <array>
#include <random>
#include <set>

#include "common/errors.h"
#include "kvcache/kv_cache_manager.h"
#include "tests/engine/scheduler_harness.h"

namespace sparseserve {
namespace {

using namespace scheduler_testing;


TEST(Scheduler, ChunkedPrefillSplitsALongPromptUnderTheTokenBudget) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 32}, 64);
  h.add(1, 100, 3);
  ASSERT_TRUE(h.run(10));
  const std::vector<Chunk> want = {{0, 32, false, true}, {32, 32, false, false}, {64, 32, false, false},
                                   {96, 4, true, false}, {100, 1, true, false},  {101, 1, true, false}};
  EXPECT_EQ(chunks(h.history[1]), want);
  EXPECT_EQ(h.kv.free_pages(), 64);
}

TEST(Scheduler, DecodeAndPrefillChunkShareAStep) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 16}, 64);
  h.add(1, 8, 5);
  h.step();
  h.add(2, 40, 2);
  const StepPlan plan = h.step();
  ASSERT_EQ(plan.seqs.size(), 2u);
  EXPECT_EQ(plan.seqs[0].id, 1u);
  EXPECT_EQ(chunks({plan.seqs[0]}), (std::vector<Chunk>{{8, 1, true, false}}));  // decode
  EXPECT_EQ(plan.seqs[1].id, 2u);
  EXPECT_EQ(chunks({plan.seqs[1]}), (std::vector<Chunk>{{0, 15, false, true}}));  // prefill chunk
  EXPECT_EQ(plan.num_tokens, 16);
  ASSERT_TRUE(h.run(20));
}

TEST(Scheduler, MaxNumSeqsIsRespected) {
  Harness h({.max_num_seqs = 2, .max_num_batched_tokens = 256}, 64);
  for (uint64_t id = 1; id <= 4; ++id) h.add(id, 10, 3);
  const StepPlan first = h.step();
  ASSERT_EQ(first.seqs.size(), 2u);
  EXPECT_EQ(h.sched.num_waiting(), 2u);
  ASSERT_TRUE(h.run(20));
  EXPECT_EQ(h.max_running, 2u);
  EXPECT_EQ(h.finished.size(), 4u);
}

TEST(Scheduler, AdmissionWaitsForPagesAndResumesWhenTheyAreFreed) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 64}, 4);
  h.add(1, 30, 2);  // 2 blocks x 2 slots: the whole pool
  h.step();
  EXPECT_EQ(h.kv.free_pages(), 0);
  h.add(2, 10, 1);
  const StepPlan blocked = h.step();  // request 1 decodes and finishes; 2 cannot get a page
  ASSERT_EQ(blocked.seqs.size(), 1u);
  EXPECT_EQ(blocked.seqs[0].id, 1u);
  EXPECT_EQ(h.sched.num_waiting(), 1u);
  EXPECT_EQ(h.kv.free_pages(), 4);  // 1 finished
  const StepPlan admitted = h.step();
  ASSERT_EQ(admitted.seqs.size(), 1u);
  EXPECT_EQ(admitted.seqs[0].id, 2u);
  EXPECT_FALSE(h.sched.has_work());
}

TEST(Scheduler, PreemptionTakesTheNewestWhichResumesAndFinishes) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 64}, 8);
  h.add(1, 15, 3);  // 2 pages, also for its first sampled token
  h.add(2, 20, 3);  // 4 pages (its decode fits in them)
  h.add(3, 15, 3);  // 2 pages: the pool is full after the first step
  h.step();
  EXPECT_EQ(h.kv.free_pages(), 0);
  EXPECT_TRUE(h.step().preempted.empty());  // every decode fits the pages it holds
  const StepPlan plan = h.step();  // 1 needs 2 more pages: 3 (the newest) goes, not 2
  EXPECT_EQ(plan.preempted, std::vector<uint64_t>{3});
  EXPECT_EQ(h.sched.num_preemptions(), 1);
  EXPECT_FALSE(h.kv.has_sequence(3));
  const auto p = h.sched.progress(3);
  EXPECT_FALSE(p->running);
  EXPECT_EQ(p->computed, 0);
  EXPECT_EQ(p->total, 17);  // the tokens it sampled are kept
  ASSERT_TRUE(h.run(20));
  // 3 recomputes prompt + its generated tokens in one chunk and samples its 3rd token.
  const std::vector<Chunk> want = {{0, 15, true, true}, {15, 1, true, false}, {0, 17, true, true}};
  EXPECT_EQ(chunks(h.history[3]), want);
  EXPECT_EQ(h.finished, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(h.kv.free_pages(), 8);
}

TEST(Scheduler, AbortFreesPagesAtOnceFromRunningOrWaiting) {
  Harness h({.max_num_seqs = 2, .max_num_batched_tokens = 256}, 16);
  h.add(1, 40, 5);
  h.add(2, 20, 5);
  h.add(3, 10, 5);  // waits for a seat
  const StepPlan plan = h.step();
  EXPECT_EQ(h.kv.free_pages(), 16 - 6 - 4);
  h.cancel(1);
  EXPECT_EQ(h.kv.free_pages(), 12);
  h.cancel(3);
  EXPECT_EQ(h.sched.num_waiting(), 0u);
  // Aborted between plan and on_step_done: the report skips it.
  const StepPlan next = h.sched.plan();
  ASSERT_EQ(next.seqs.size(), 1u);
  h.cancel(2);
  EXPECT_NO_THROW(h.sched.on_step_done(next, {2}));
  EXPECT_EQ(h.kv.free_pages(), 16);
  EXPECT_EQ(h.kv.num_sequences(), 0u);
  EXPECT_FALSE(h.sched.has_work());
  EXPECT_FALSE(h.sched.cancel(2));
}

TEST(Scheduler, FinishFreesPages) {
  Harness h({.max_num_seqs = 2, .max_num_batched_tokens = 256}, 16);
  h.add(1, 40, 1);
  h.step();  // samples its only token and finishes
  EXPECT_EQ(h.finished, std::vector<uint64_t>{1});
  EXPECT_EQ(h.kv.free_pages(), 16);
  EXPECT_THROW(h.sched.finish(1), InternalError);
}

TEST(Scheduler, UnservableRequestsAreReportedAndStreamingLayoutsNeedFewerPages) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 64}, 6);
  h.add(1, 48, 1);                        // 49 tokens: 2 x 4 pages > 6
  h.add(2, 1000, 2, streaming_layout());  // sink + ring: 2 x 3 pages, whatever the length
  h.add(3, 47, 1);                        // 48 tokens: 2 x 3 pages, fits an empty pool
  h.add(4, 1000, 1);                      // the same prompt as 2, dense: 2 x 63 pages
  const StepPlan plan = h.step();
  EXPECT_EQ(plan.unservable, std::vector<uint64_t>{1});
  EXPECT_FALSE(h.sched.progress(1).has_value());
  ASSERT_TRUE(h.run(100));
  EXPECT_EQ(h.finished, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(h.unservable, (std::vector<uint64_t>{1, 4}));
  EXPECT_EQ(h.kv.free_pages(), 6);
}

TEST(Scheduler, ARequestOutgrowingThePoolIsReportedUnservable) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 64}, 4);
  h.add(1, 30, 10);  // the pool holds 32 tokens of it
  ASSERT_TRUE(h.run(10));
  EXPECT_EQ(h.unservable, std::vector<uint64_t>{1});
  EXPECT_EQ(h.sched.num_preemptions(), 0);  // reported as its next token outgrew the pool
  EXPECT_EQ(h.kv.free_pages(), 4);
}

// A decode whose next token needs more than the pool outside its own pages is reported at once;
// the others are not preempted for it first (they keep their pages and their work).
TEST(Scheduler, AnOutgrowingRequestPreemptsNoBystander) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 64}, 9);
  h.add(1, 63, 10);  // 64 tokens: 8 pages; 65: 10 pages, more than the pool
  h.add(2, 4, 30, {.retrieval_slots = 1, .streaming_slots = 0, .streaming = std::nullopt});  // 1 page
  ASSERT_TRUE(h.run(100));
  EXPECT_EQ(h.unservable, std::vector<uint64_t>{1});
  EXPECT_EQ(h.sched.num_preemptions(), 0);
  EXPECT_EQ(h.finished, std::vector<uint64_t>{2});
}

// A prompt that fits the pool but not beside a long decode waits for the whole prompt's pages.
// Admitted on its first chunk, it would prefill until the pages ran out, preempt itself (the
// newest) and start over, for as long as the decode held its pages.
TEST(Scheduler, APromptIsAdmittedOnlyWhenAllOfItFits) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 16}, 9);
  h.add(1, 4, 400, streaming_layout());  // 3 pages for as long as it runs (a full ring)
  for (int i = 0; i < 40; ++i) h.step();
  h.add(2, 56, 1);                       // 8 pages: fits only the whole pool
  h.add(3, 4, 1, streaming_layout());    // fits beside the decode, but may not pass the head
  ASSERT_TRUE(h.run(2000));
  EXPECT_EQ(h.sched.num_preemptions(), 0);
  int64_t ran = 0;
  for (const ScheduledSeq& s : h.history[2]) ran += s.count;
  EXPECT_EQ(ran, 56) << "the prompt ran once";
  EXPECT_GT(h.first_step[2], h.first_step[1] + 399) << "it waited for the decode's pages";
}

// A running request's next sampled token may need a new page: it is promised to it, so a prompt
// that would fill the pool beside it waits instead of being admitted and then preempted the next
// step, its whole prefill thrown away.
TEST(Scheduler, ARunningRequestsNextTokenKeepsItsPageFromAnAdmission) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 256}, 10);
  const SequenceLayout one_lane{.retrieval_slots = 1, .streaming_slots = 0, .streaming = std::nullopt};
  h.add(1, 16, 3, one_lane);   // 1 page; its first sampled token needs a 2nd
  h.add(2, 144, 1, one_lane);  // 9 pages: all the others
  const StepPlan first = h.step();
  ASSERT_EQ(first.seqs.size(), 1u);
  EXPECT_EQ(first.seqs[0].id, 1u);
  ASSERT_TRUE(h.run(20));
  EXPECT_EQ(h.sched.num_preemptions(), 0);
  int64_t ran = 0;
  for (const ScheduledSeq& s : h.history[2]) ran += s.count;
  EXPECT_EQ(ran, 144) << "the prompt ran once";
}

// Prompts admitted in one plan: each later one is admitted only when the pages left also hold what
// the earlier ones still need for their whole prompts and first sampled tokens. Request 1's first
// chunk is a partial one (32 of 47 tokens, aligned to 16), so 2 more of its pages are promised;
// request 3 would take them.
TEST(Scheduler, AdmissionsInOnePlanLeaveEachOthersPagesAlone) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 44}, 8);
  h.add(1, 47, 1, dense_layout(), 0, ChunkRule{.prompt_block = 16});  // 6 pages in all
  h.add(2, 4, 1);  // 2 pages
  h.add(3, 4, 1);  // 2 pages: only 2 are free, and they are promised to 1
  const StepPlan first = h.step();
  ASSERT_EQ(first.seqs.size(), 2u);
  EXPECT_EQ(first.seqs[0].count, 32);
  EXPECT_EQ(first.seqs[1].id, 2u);
  ASSERT_TRUE(h.run(100));
  EXPECT_EQ(h.sched.num_preemptions(), 0);
}

// Higher-priority decodes leave less than a block of budget every step: the aligned prefill gets a
// block reserved the step after it was short, so it still advances.
TEST(Scheduler, AnAlignedChunkIsNotStarvedByHigherPriorityDecodes) {
  Harness h({.max_num_seqs = 8, .max_num_batched_tokens = 20, .priority = true, .aging_steps = 1 << 20}, 64);
  for (uint64_t id = 1; id <= 6; ++id) h.add(id, 1, 200, dense_layout(), 0);  // 6 decodes a step
  h.step();
  h.add(9, 64, 1, dense_layout(), 5, ChunkRule{.prompt_block = 16});  // 14 tokens left: under a block
  for (int i = 0; i < 40 && !std::count(h.finished.begin(), h.finished.end(), 9); ++i) h.step();
  EXPECT_TRUE(std::count(h.finished.begin(), h.finished.end(), 9)) << "the aligned prefill starved";
  for (const ScheduledSeq& s : h.history[9]) EXPECT_TRUE(s.count == 16 || s.start + s.count == 64) << s.count;
  ASSERT_TRUE(h.run(2000));
}

// The queue's head has a prompt block as large as the whole budget, so a decode beside it leaves
// it short, and a reserved block then leaves the decode nothing. The head also needs pages the
// decode holds. The reservation must not outlive the pages' veto, or no plan would ever hold a
// token again.
TEST(Scheduler, AReservedBlockAsLargeAsTheBudgetDoesNotStallTheRunningRequests) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 32}, 16);
  h.add(1, 48, 20);  // then 20 decode steps
  for (int i = 0; i < 3; ++i) h.step();
  // Needs pages request 1 holds (or has been promised): it waits for request 1 to finish.
  h.add(2, 96, 1, dense_layout(), 0, ChunkRule{.prompt_block = 32});
  for (int i = 0; i < 40; ++i) {
    const StepPlan plan = h.step();
    if (!h.live.contains(1)) break;
    EXPECT_FALSE(plan.seqs.empty()) << "step " << h.steps << ": nothing ran while request 1 decodes";
  }
  ASSERT_TRUE(h.run(500));
  EXPECT_EQ(h.finished.size(), 2u);
  EXPECT_EQ(h.finished.front(), 1u);
}

TEST(Scheduler, ChunkRulesAlignPromptChunksAndRecomputeGeneratedPositionsOneByOne) {
  // Prompt chunks that end inside the prompt end on a multiple of 64; the last one reaches it.
  {
    KvCacheManager kv(kvcache::KvCacheConfig{.page_tokens = kPageTokens, .logical_page_tokens = 16}, 64);
    Scheduler s({.max_num_seqs = 4, .max_num_batched_tokens = 100}, kv);
    s.add(1, 300, dense_layout(), 0, ChunkRule{.prompt_block = 64});
    std::vector<int64_t> counts;
    for (int i = 0; i < 5; ++i) {
      const StepPlan p = s.plan();
      ASSERT_EQ(p.seqs.size(), 1u);
      counts.push_back(p.seqs[0].count);
      s.on_step_done(p, p.seqs[0].sample ? std::vector<uint64_t>{1} : std::vector<uint64_t>{});
    }
    EXPECT_EQ(counts, (std::vector<int64_t>{64, 64, 64, 64, 44}));  // then 1 per decode step
  }
  // max_prompt_chunk (prompt logprobs: logits at every position) caps chunks that start inside the
  // prompt, whatever the budget.
  {
    KvCacheManager kv(kvcache::KvCacheConfig{.page_tokens = kPageTokens, .logical_page_tokens = 16}, 64);
    Scheduler s({.max_num_seqs = 4, .max_num_batched_tokens = 1000}, kv);
    s.add(1, 300, dense_layout(), 0, ChunkRule{.max_prompt_chunk = 128});
    std::vector<int64_t> counts;
    for (int i = 0; i < 4; ++i) {
      const StepPlan p = s.plan();
      ASSERT_EQ(p.seqs.size(), 1u);
      counts.push_back(p.seqs[0].count);
      s.on_step_done(p, p.seqs[0].sample ? std::vector<uint64_t>{1} : std::vector<uint64_t>{});
    }
    EXPECT_EQ(counts, (std::vector<int64_t>{128, 128, 44, 1}));
  }
  // Such chunks share max_logit_rows per step (each row is a vocabulary of logits); the step's
  // first is never held back, a later one takes what is left or waits, and other requests do not
  // count.
  {
    KvCacheManager kv(kvcache::KvCacheConfig{.page_tokens = kPageTokens, .logical_page_tokens = 16}, 256);
    Scheduler s({.max_num_seqs = 8, .max_num_batched_tokens = 2048, .max_logit_rows = 300}, kv);
    s.add(1, 600, dense_layout(), 0, ChunkRule{.max_prompt_chunk = 256});
    s.add(2, 600, dense_layout(), 0, ChunkRule{.max_prompt_chunk = 256});
    s.add(3, 600, dense_layout());
    s.add(4, 600, dense_layout(), 0, ChunkRule{.max_prompt_chunk = 256});
    StepPlan p = s.plan();
    ASSERT_EQ(p.seqs.size(), 3u);  // 4 waits for the next step's rows
    EXPECT_EQ(p.seqs[0].count, 256);
    EXPECT_EQ(p.seqs[1].count, 44);   // 300 - 256
    EXPECT_EQ(p.seqs[2].count, 600);  // needs no rows
    s.on_step_done(p, {3});
    p = s.plan();
    ASSERT_EQ(p.seqs.size(), 3u);
    EXPECT_EQ(p.seqs[0].count, 256);
    EXPECT_EQ(p.seqs[1].count, 44);
    EXPECT_EQ(p.seqs[2].id, 3u);
    Scheduler big({.max_num_seqs = 1, .max_num_batched_tokens = 64, .max_logit_rows = 1}, kv);
    big.add(9, 600, dense_layout(), 0, ChunkRule{.max_prompt_chunk = 256});
    EXPECT_EQ(big.plan().seqs.at(0).count, 64);  // the first chunk of a step: only the budget limits it
  }
  // A budget left smaller than a block waits for the next step; a block over the whole budget
  // could never be scheduled and is not kept.
  {
    KvCacheManager kv(kvcache::KvCacheConfig{.page_tokens = kPageTokens, .logical_page_tokens = 16}, 64);
    Scheduler s({.max_num_seqs = 4, .max_num_batched_tokens = 100}, kv);
    s.add(1, 30, dense_layout());
    s.add(2, 200, dense_layout(), 0, ChunkRule{.prompt_block = 64});
    s.add(3, 200, dense_layout(), 0, ChunkRule{.prompt_block = 128});
    const StepPlan p = s.plan();
    ASSERT_EQ(p.seqs.size(), 3u);
    EXPECT_EQ(p.seqs[1].count, 64);  // 70 of the budget left
    EXPECT_EQ(p.seqs[2].count, 6);   // prompt_block 128 > 100: taken as 1
  }
  // After a preemption, generated positions come back one per step, the prompt as chunks.
  {
    Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 64}, 8);
    h.add(1, 16, 40);
    h.add(2, 20, 40, dense_layout(), 0, ChunkRule{.recompute_as_decode = true});  // the newer: the victim
    while (h.sched.num_preemptions() == 0 && h.sched.has_work()) h.step();
    ASSERT_EQ(h.sched.num_preemptions(), 1);
    const size_t before = h.history[2].size();
    ASSERT_TRUE(h.run(500));
    const std::vector<ScheduledSeq> after(h.history[2].begin() + static_cast<std::ptrdiff_t>(before), h.history[2].end());
    ASSERT_FALSE(after.empty());
    EXPECT_EQ(after[0].start, 0);
    EXPECT_EQ(after[0].count, 20);  // the prompt in one chunk
    for (size_t i = 1; i < after.size(); ++i) EXPECT_EQ(after[i].count, 1) << i;
  }
}

TEST(Scheduler, FcfsHeadIsAdmittedWhileShortRequestsKeepArriving) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 32}, 8);
  uint64_t next = 1;
  for (; next <= 3; ++next) h.add(next, 8, 4);
  h.step();
  h.add(100, 60, 2);  // needs the whole pool
  next = 101;
  for (int i = 0; i < 500 && !std::count(h.finished.begin(), h.finished.end(), 100); ++i) {
    h.add(next++, 8, 4);
    h.step();
  }
  ASSERT_TRUE(std::count(h.finished.begin(), h.finished.end(), 100));
  for (const auto& [id, step] : h.first_step) {
    if (id > 100) {
      EXPECT_GT(step, h.first_step[100]) << "request " << id << " overtook the head";
    }
  }
  ASSERT_TRUE(h.run(1000));
}

TEST(Scheduler, PriorityGoesFirstAndPreemptsTheLowestPriority) {
  Harness h({.max_num_seqs = 4, .max_num_batched_tokens = 64, .priority = true, .aging_steps = 1000}, 4);
  h.add(1, 15, 3, dense_layout(), 9);  // older but low priority
  h.add(2, 15, 3, dense_layout(), 0);
  const StepPlan first = h.step();
  ASSERT_EQ(first.seqs.size(), 2u);
  EXPECT_EQ(first.seqs[0].id, 2u);
  EXPECT_TRUE(h.step().preempted.empty());
  const StepPlan third = h.step();  // 2 needs 2 more pages: 1 goes although it is older
  EXPECT_EQ(third.preempted, std::vector<uint64_t>{1});
  ASSERT_TRUE(h.run(20));
  EXPECT_EQ(h.finished, (std::vector<uint64_t>{2, 1}));
}

TEST(Scheduler, AgingLetsALowPriorityRequestFinishUnderAStreamOfHighOnes) {
  Harness h({.max_num_seqs = 1, .max_num_batched_tokens = 64, .priority = true, .aging_steps = 4}, 64);
  h.add(1, 4, 2, dense_layout(), 10);
  uint64_t next = 2;
  for (int i = 0; i < 2000 && !std::count(h.finished.begin(), h.finished.end(), 1); ++i) {
    h.add(next++, 4, 2, dense_layout(), 0);
    h.step();
  }
  ASSERT_TRUE(std::count(h.finished.begin(), h.finished.end(), 1));
  int overtaken = 0;  // high-priority requests that arrived later and still ran first
  for (const auto& [id, step] : h.first_step) overtaken += id > 1 && step < h.first_step[1];
  EXPECT_GT(overtaken, 10);
  ASSERT_TRUE(h.run(10000));
}

// Returns the number of preemptions (the small pools must force some). prefix: dense requests
// with unaligned chunks look their prompts up in the prefix cache (prompts from three stems).
int64_t stress(bool priority, uint32_t seed, bool prefix = false, int64_t* cached_starts = nullptr) {
  std::mt19937 rng(seed);
  const auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const SchedulerConfig config{.max_num_seqs = static_cast<int32_t>(uniform(1, 6)),
                               .max_num_batched_tokens = static_cast<int32_t>(uniform(4, 64)),
                               .priority = priority,
                               .aging_steps = static_cast<int32_t>(uniform(1, 8))};
  Harness h(config, static_cast<int32_t>(uniform(16, 40)), prefix);  // a request needs ≤ 16 pages
  const int kRequests = 60;
  uint64_t added = 0;
  int64_t idle = 0, most_idle = 0;  // plans in a row that ran nothing while there was work
  while ((added < kRequests || h.sched.has_work()) && h.steps < 20000) {
    if (added < kRequests && uniform(0, 9) < 3) {
      const SequenceLayout layout = uniform(0, 2) == 0 ? mixed_layout() : dense_layout();
      // Some prompts prefill in aligned blocks (dynamic prefill sparsity), up to the whole budget,
      // and look up their prefixes too.
      const int32_t budget = config.max_num_batched_tokens;
      const ChunkRule rule{.prompt_block = uniform(0, 2) != 0 ? 1
                                           : uniform(0, 1) == 0 ? budget
                                                                : static_cast<int32_t>(uniform(2, budget))};
      const int64_t prompt = uniform(1, 80);
      std::shared_ptr<const kvcache::PrefixKey> key;
      if (prefix) {
        auto k = std::make_shared<kvcache::PrefixKey>();
        k->profile = layout.streaming_slots > 0 ? "balanced" : "dense";  // a profile has one layout
        const int64_t stem = uniform(0, 2), stem_len = uniform(0, prompt);
        for (int64_t i = 0; i < prompt; ++i) {
          k->tokens.push_back(static_cast<int32_t>(i < stem_len ? stem * 1000 + i : 5000 + uniform(0, 1)));
        }
        k->match = uniform(0, 9) != 0;
        key = k;
      }
      h.add(++added, prompt, uniform(1, 40), layout, static_cast<int32_t>(uniform(0, 3)), rule, key);
    }
    if (!h.live.empty() && uniform(0, 99) == 0) {
      auto it = h.live.begin();
      std::advance(it, uniform(0, static_cast<int64_t>(h.live.size()) - 1));
      h.cancel(it->first);
    }
    const bool work = h.sched.has_work();
    const StepPlan plan = h.step();
    idle = work && plan.seqs.empty() && plan.unservable.empty() ? idle + 1 : 0;
    most_idle = std::max(most_idle, idle);
  }
  // A reservation that nothing can use must not stop the running requests (the cancels above
  // would end such a stall in the end, so the run alone does not show it).
  EXPECT_LE(most_idle, 3) << "seed " << seed;
  EXPECT_EQ(h.finished.size() + h.aborted.size(), static_cast<size_t>(kRequests)) << "seed " << seed;
  EXPECT_TRUE(h.unservable.empty());
  EXPECT_EQ(h.kv.free_pages(), h.kv.num_pages());
  EXPECT_EQ(h.kv.num_sequences(), 0u);
  EXPECT_EQ(h.sched.num_preemptions(), h.preemptions);
  if (cached_starts != nullptr) *cached_starts += h.cached_starts;
  return h.preemptions;
}

TEST(Scheduler, StressEveryRequestFinishesFcfs) {
  int64_t preemptions = 0;
  for (uint32_t seed = 1; seed <= 40; ++seed) preemptions += stress(false, seed);
  EXPECT_GT(preemptions, 40);
}

TEST(Scheduler, StressEveryRequestFinishesWithPriorities) {
  int64_t preemptions = 0;
  for (uint32_t seed = 1; seed <= 40; ++seed) preemptions += stress(true, seed);
  EXPECT_GT(preemptions, 40);
}

TEST(Scheduler, StressEveryRequestFinishesWithPrefixCaching) {
  int64_t preemptions = 0, cached_starts = 0;
  for (uint32_t seed = 1; seed <= 40; ++seed) preemptions += stress(seed % 2 == 0, seed, true, &cached_starts);
  EXPECT_GT(preemptions, 40);
  EXPECT_GT(cached_starts, 100);
}

TEST(Scheduler, RejectsBadConfigAndBadRequests) {
  KvCacheManager kv({.page_tokens = kPageTokens, .logical_page_tokens = 16}, 8);
  EXPECT_THROW(Scheduler({.max_num_seqs = 0}, kv), InvalidArgument);
  EXPECT_THROW(Scheduler({.max_num_batched_tokens = 0}, kv), InvalidArgument);
  Scheduler sched({}, kv);
  sched.add(1, 5, dense_layout());
  EXPECT_THROW(sched.add(1, 5, dense_layout()), InternalError);
  EXPECT_THROW(sched.add(2, 0, dense_layout()), InternalError);
  EXPECT_THROW(sched.add(3, 5, SequenceLayout{.retrieval_slots = 0, .streaming_slots = 1, .streaming = {}}), InternalError);
  EXPECT_EQ(kv.num_sequences(), 0u);
  EXPECT_EQ(sched.num_waiting(), 1u);
}

}  // namespace
}  // namespace sparseserve
