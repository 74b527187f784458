// The scheduler tests' harness: the scheduler driven by a fake executor. No model: it "samples" one
// token for every sample=true sequence and finishes a request once it has produced its output
// length. The harness keeps its own model of every request (computed, total, generated) and checks
// each plan against it and the page pool against the layouts, so every test also checks the step
// invariants.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "engine/scheduler.h"
#include "kvcache/kv_cache_manager.h"

namespace sparseserve::scheduler_testing {

using kvcache::KvCacheManager;
using kvcache::SequenceLayout;

constexpr int32_t kPageTokens = 16;
constexpr kvcache::StreamingWindow kWindow{.sink_tokens = 16, .local_tokens = 16};  // 1 sink + 2 ring pages

inline SequenceLayout dense_layout() { return {.retrieval_slots = 2, .streaming_slots = 0, .streaming = std::nullopt}; }
inline SequenceLayout mixed_layout() { return {.retrieval_slots = 1, .streaming_slots = 1, .streaming = kWindow}; }
inline SequenceLayout streaming_layout() { return {.retrieval_slots = 0, .streaming_slots = 2, .streaming = kWindow}; }

// Pages a sequence of `len` tokens holds, from the layout alone (kvcache/README.md).
inline int64_t expected_pages(const SequenceLayout& l, int64_t len) {
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
inline std::vector<Chunk> chunks(const std::vector<ScheduledSeq>& seqs) {
  std::vector<Chunk> out;
  for (const ScheduledSeq& s : seqs) out.push_back({s.start, s.count, s.sample, s.resumed});
  return out;
}
inline bool operator==(const Chunk& a, const Chunk& b) {
  return a.start == b.start && a.count == b.count && a.sample == b.sample && a.resumed == b.resumed;
}
}  // namespace sparseserve::scheduler_testing
