// The scheduler driven by a fake executor: no model, it "samples" one token for every sample=true
// sequence and finishes a request once it has produced its output length. The harness keeps its own
// model of every request (computed, total, generated) and checks each plan against it and the page
// pool against the layouts, so every test also checks the step invariants.
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <map>
#include <random>
#include <set>

#include "common/errors.h"
#include "kvcache/kv_cache_manager.h"

namespace sparseserve {
namespace {

using kvcache::KvCacheManager;
using kvcache::SequenceLayout;

constexpr int32_t kPageTokens = 16;
constexpr kvcache::StreamingWindow kWindow{.sink_tokens = 16, .local_tokens = 16};  // 1 sink + 2 ring pages

SequenceLayout dense_layout() { return {.retrieval_slots = 2, .streaming_slots = 0, .streaming = std::nullopt}; }
SequenceLayout mixed_layout() { return {.retrieval_slots = 1, .streaming_slots = 1, .streaming = kWindow}; }
SequenceLayout streaming_layout() { return {.retrieval_slots = 0, .streaming_slots = 2, .streaming = kWindow}; }

// Pages a sequence of `len` tokens holds, from the layout alone (kvcache/README.md).
int64_t expected_pages(const SequenceLayout& l, int64_t len) {
  const int64_t blocks = (len + kPageTokens - 1) / kPageTokens;
  const int64_t ring_slot_pages = 1 + (1 + 1);
  return l.retrieval_slots * blocks + l.streaming_slots * std::min(ring_slot_pages, blocks);
}

struct Harness {
  struct Model {
    int64_t prompt = 0, output = 0, computed = 0, total = 0, generated = 0;
    SequenceLayout layout;
    int64_t block = 1;  // the rule's prompt_block as the scheduler takes it
  };

  Harness(SchedulerConfig c, int32_t num_pages, bool prefix_caching = false)
      : config(c),
        kv(kvcache::KvCacheConfig{.page_tokens = kPageTokens, .logical_page_tokens = 16}, num_pages, prefix_caching),
        sched(c, kv) {}

  // prefix: the prompt's tokens for the prefix cache (prompt tokens long), or none.
  void add(uint64_t id, int64_t prompt, int64_t output, SequenceLayout layout = dense_layout(), int32_t priority = 0,
           ChunkRule rule = {}, std::shared_ptr<const kvcache::PrefixKey> prefix = nullptr) {
    if (prefix) tokens[id] = prefix->tokens;
    sched.add(id, prompt, layout, priority, rule, std::move(prefix));
    const bool aligned = rule.prompt_block > 1 && rule.prompt_block <= config.max_num_batched_tokens;
    live[id] = Model{.prompt = prompt, .output = output, .computed = 0, .total = prompt, .generated = 0, .layout = layout,
                     .block = aligned ? rule.prompt_block : 1};
  }

  void cancel(uint64_t id) {
    // Its pages no other sequence shares (another may have adopted blocks it computed) are free in
    // the same call; so are cached blocks its chain used but computed again itself (a streaming
    // window the cache did not cover, a block another request cached meanwhile).
    std::set<int32_t> own, others;
    for (const auto& [other, m] : live) {
      if (kv.has_sequence(other)) insert_pages(kv.sequence(other), other == id ? own : others);
    }
    int64_t held = 0;
    for (const int32_t page : own) held += others.contains(page) ? 0 : 1;
    const int32_t free_before = kv.free_pages();
    ASSERT_TRUE(sched.cancel(id));
    EXPECT_GE(kv.free_pages(), free_before + held) << "abort frees the pages in the same call";
    if (!kv.prefix_caching()) {
      EXPECT_EQ(kv.free_pages(), free_before + held);
    }
    EXPECT_FALSE(kv.has_sequence(id));
    live.erase(id);
    aborted.insert(id);
  }

  // One iteration: plan, check the plan against the model, "run" it, report, finish.
  StepPlan step() {
    StepPlan plan = sched.plan();
    ++steps;
    check_plan(plan);
    // The engine's page copies and snapshot reservations around its forward pass.
    for (const ScheduledSeq& s : plan.seqs) kv.reserve_snapshots(s.id, s.start, s.start + s.count);
    kv.take_copies();
    std::vector<uint64_t> appended, done;
    for (const ScheduledSeq& s : plan.seqs) {
      Model& m = live.at(s.id);
      m.computed = s.start + s.count;
      kv.commit(s.id, m.computed, tokens[s.id]);  // the executor stored the chunk's K/V
    }
    kv.take_copies();
    for (const ScheduledSeq& s : plan.seqs) {
      Model& m = live.at(s.id);
      history[s.id].push_back(s);
      first_step.emplace(s.id, steps);
      if (!s.sample) continue;
      appended.push_back(s.id);
      if (++m.generated == m.output) done.push_back(s.id);
    }
    sched.on_step_done(plan, appended);
    for (const uint64_t id : appended) ++live.at(id).total;
    for (const uint64_t id : done) {
      const auto p = sched.progress(id);
      EXPECT_EQ(p->total, live.at(id).prompt + live.at(id).output) << id;
      sched.finish(id);
      live.erase(id);
      finished.push_back(id);
    }
    check_pages();
    return plan;
  }

  bool run(int64_t max_steps) {
    for (int64_t i = 0; i < max_steps && sched.has_work(); ++i) step();
    return !sched.has_work();
  }

  void check_plan(const StepPlan& plan) {
    int64_t tokens = 0;
    std::set<uint64_t> ids;
    for (const uint64_t id : plan.unservable) {
      EXPECT_FALSE(kv.has_sequence(id));
      live.erase(id);
      unservable.push_back(id);
    }
    for (const uint64_t id : plan.preempted) {
      EXPECT_FALSE(kv.has_sequence(id)) << "a preempted request's pages are released";
      live.at(id).computed = 0;
      ++preemptions;
    }
    for (const ScheduledSeq& s : plan.seqs) {
      EXPECT_TRUE(ids.insert(s.id).second) << "id scheduled twice: " << s.id;
      EXPECT_FALSE(std::count(plan.preempted.begin(), plan.preempted.end(), s.id)) << s.id;
      Model& m = live.at(s.id);
      EXPECT_GE(s.count, 1);
      if (s.resumed) {  // admitted (again): from nothing, or from whole blocks of its cached prefix
        EXPECT_EQ(m.computed, 0) << s.id;
        EXPECT_EQ(s.start % kPageTokens, 0) << s.id;
        EXPECT_EQ(s.start % m.block, 0) << s.id;  // and on the rule's blocks
        if (!kv.prefix_caching()) {
          EXPECT_EQ(s.start, 0) << s.id;
        }
        if (s.start > 0) ++cached_starts;
        m.computed = s.start;
      } else {
        EXPECT_GT(m.computed, 0) << s.id;
      }
      EXPECT_EQ(s.start, m.computed) << s.id;
      EXPECT_LE(s.start + s.count, m.total) << s.id;
      if (s.start + s.count < m.prompt) {
        EXPECT_EQ((s.start + s.count) % m.block, 0) << s.id;
      }
      EXPECT_EQ(s.sample, s.start + s.count == m.total) << s.id;
      EXPECT_EQ(kv.sequence(s.id).length(), s.start + s.count) << "the chunk's pages are allocated";
      tokens += s.count;
    }
    EXPECT_EQ(plan.num_tokens, tokens);
    EXPECT_LE(plan.num_tokens, config.max_num_batched_tokens);
    EXPECT_LE(sched.num_running(), static_cast<size_t>(config.max_num_seqs));
    max_running = std::max(max_running, sched.num_running());
  }

  static void insert_pages(const kvcache::SequenceKv& s, std::set<int32_t>& pages) {
    for (int32_t k = 0; k < s.retrieval_slots(); ++k) pages.insert(s.retrieval_pages(k).begin(), s.retrieval_pages(k).end());
    for (int32_t k = 0; k < s.streaming_slots(); ++k) pages.insert(s.streaming_pages(k).begin(), s.streaming_pages(k).end());
  }

  // Pages in use are exactly those of the live (running) sequences, as their layouts say (a page
  // shared through the prefix cache once).
  void check_pages() {
    std::set<int32_t> pages;
    for (const auto& [id, m] : live) {
      if (!kv.has_sequence(id)) continue;
      EXPECT_TRUE(sched.progress(id)->running) << id;
      const kvcache::SequenceKv& s = kv.sequence(id);
      EXPECT_EQ(s.length(), m.computed) << id;
      EXPECT_EQ(s.pages_held(), expected_pages(m.layout, s.length())) << id;
      insert_pages(s, pages);
    }
    if (kv.prefix_caching()) {  // plus cached blocks the sequences' chains use (computed twice)
      EXPECT_GE(kv.num_pages() - kv.free_pages(), std::ssize(pages));
    } else {
      EXPECT_EQ(kv.num_pages() - kv.free_pages(), std::ssize(pages));
    }
    EXPECT_EQ(kv.num_sequences(), sched.num_running());
  }

  SchedulerConfig config;
  KvCacheManager kv;
  Scheduler sched;
  std::map<uint64_t, Model> live;
  std::map<uint64_t, std::vector<ScheduledSeq>> history;
  std::map<uint64_t, std::vector<int32_t>> tokens;  // the prompts of requests with prefix keys
  std::map<uint64_t, int64_t> first_step;  // step at which an id first ran
  std::vector<uint64_t> finished, unservable;
  std::set<uint64_t> aborted;
  int64_t steps = 0, preemptions = 0;
  int64_t cached_starts = 0;  // admissions that started from a cached prefix
  size_t max_running = 0;
};

struct Chunk {
  int64_t start, count;
  bool sample, resumed;
};
std::vector<Chunk> chunks(const std::vector<ScheduledSeq>& seqs) {
  std::vector<Chunk> out;
  for (const ScheduledSeq& s : seqs) out.push_back({s.start, s.count, s.sample, s.resumed});
  return out;
}
bool operator==(const Chunk& a, const Chunk& b) {
  return a.start == b.start && a.count == b.count && a.sample == b.sample && a.resumed == b.resumed;
}

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
