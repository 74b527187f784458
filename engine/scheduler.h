// Continuous-batching scheduler (host-only: no tensors, no CUDA; tested with a fake model).
//
// One progress model per request: `computed` tokens (whose K/V are cached) vs `total` tokens
// (prompt + generated so far). A step runs tokens [computed, computed + count) of each scheduled
// request; when that reaches `total`, the step samples one new token for it. Chunked prefill,
// decode and recompute after preemption are all the same rule — no phases — within the request's
// ChunkRule (prompt chunks aligned to blocks; generated positions recomputed one per step). An
// aligned chunk that found less than a block of budget left gets a block reserved in the next step:
// the requests before it leave it that much (they may wait a step), so no stream of earlier or
// higher-priority decodes can starve it. A waiting one gets it only while a seat is free and the KV
// pages would admit it: otherwise the reservation would only hold back the running requests, whose
// progress frees the pages (with a block as large as the budget, every one of them).
//
// Per step (iteration-level batching, vLLM-style):
//   1. running requests in arrival order (or priority order): decode ones take 1 token, prefill ones
//      a chunk, within max_num_batched_tokens; pages come from the KvCacheManager (can_allocate /
//      allocate). When pages run out, the last running request in that order (the newest, or the
//      lowest priority) is preempted (pages released, computed = 0, back to the front of the
//      waiting queue), repeatedly, until the chunk fits or the request itself was the one preempted.
//      A request whose next tokens need more pages than the whole pool outside its own (a decode
//      that outgrew the cache) is reported as unservable instead, and nothing is preempted for it.
//   2. unless step 1 preempted, waiting requests are admitted in order (FCFS, or priority with
//      aging: effective priority = priority - steps spent waiting / aging_steps) while seats
//      (max_num_seqs), token budget and pages allow: the free pages, less those the running
//      requests still need to reach their `total` and hold the token their next step samples, must
//      hold all `total` tokens of the request, not only its first chunk. The decision reads the
//      manager's preview (KvCacheManager::preview_sequence), so a request not admitted changes no
//      page and evicts no cached block; admission then registers the sequence with the manager (a
//      preempted one was released: it re-registers and recomputes all `total` tokens, less a cached
//      prefix). The head of the queue is never skipped for a later request (no starvation); a
//      request whose max(total, prompt + 1) tokens need more pages than the whole pool is reported
//      as unservable.
// Running and waiting stay sorted by that order, so the last running request is the preemption
// victim and is never one already scheduled in the step.
// The plan is a value (StepPlan) the executor runs without asking back.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "kvcache/kv_cache_manager.h"

namespace sparseserve {

struct SchedulerConfig {
  int32_t max_num_seqs = 64;
  int32_t max_num_batched_tokens = 2048;
  bool priority = false;        // lower value first; FCFS among equals
  int32_t aging_steps = 64;     // with priority: a waiting request gains one level per this many steps
  // Per step, at most this many prompt positions from chunks whose every position needs logits
  // (ChunkRule::max_prompt_chunk): each holds a row of vocabulary size. The first such chunk of a
  // step is never held back by it, so every request progresses.
  int32_t max_logit_rows = 512;
  // Throws InvalidArgument naming the field (each of the counts must be ≥ 1).
  void validate() const;
};

// How a request's tokens may be cut into a step's chunks, from its sparsity profile. Both keep a
// request's output independent of how it was chunked and of preemption.
struct ChunkRule {
  // A prompt chunk that ends inside the prompt ends on a multiple of this many tokens (dynamic
  // prefill estimates its mask per query block of block_tokens, so a block must not be split).
  int32_t prompt_block = 1;
  // A recompute after preemption runs the generated positions one per step, as they were first
  // computed (decode page selection: as a prefill chunk they would see all their context).
  bool recompute_as_decode = false;
  // > 0: a chunk that starts inside the prompt takes at most this many tokens (a multiple of
  // prompt_block), so a chunk whose every position needs logits stays small; such chunks also
  // share SchedulerConfig::max_logit_rows per step.
  int64_t max_prompt_chunk = 0;
};

struct ScheduledSeq {
  uint64_t id = 0;
  int64_t start = 0;      // == computed before the step
  int64_t count = 0;      // tokens run this step (≥ 1)
  bool sample = false;    // start + count == total: sample the next token after the step
  bool resumed = false;   // first step after admission or preemption (start: the cached tokens)
};

struct StepPlan {
  std::vector<ScheduledSeq> seqs;       // in batch order
  std::vector<uint64_t> preempted;      // pages released this step; they recompute later
  std::vector<uint64_t> unservable;     // can never fit the KV cache: removed, caller fails them
  int64_t num_tokens = 0;               // Σ count
  bool empty() const { return seqs.empty(); }
};

class Scheduler {
 public:
  // Validates the config. `kv` must outlive the scheduler and is used by no one else for these ids.
  Scheduler(SchedulerConfig config, kvcache::KvCacheManager& kv);
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a new request with prompt_len ≥ 1 tokens. InternalError for a duplicate id, a
  // prompt_len < 1 or a layout the KvCacheManager rejects (checked here, not in a later plan()).
  // A prompt_block over max_num_batched_tokens could never be scheduled whole: it is taken as 1.
  // prefix: its prompt for the manager's prefix cache (null: none); an admission then starts the
  // request from the cached blocks it finds (computed = their tokens, at most total - 1, so the step
  // that samples always runs, and a multiple of the rule's prompt_block). The executor registers the
  // blocks a step computed (KvCacheManager::commit) before the step's requests finish.
  void add(uint64_t id, int64_t prompt_len, const kvcache::SequenceLayout& layout, int32_t priority = 0,
           ChunkRule rule = {}, std::shared_ptr<const kvcache::PrefixKey> prefix = nullptr);
  // Replaces a waiting request's prefix key (add's `prefix`) for its next admission: after a
  // preemption, its prompt and the generated tokens whose blocks the cache may hold. InternalError
  // for an unknown or running id.
  void set_prefix(uint64_t id, std::shared_ptr<const kvcache::PrefixKey> prefix);
  // Removes a request wherever it is; its pages are released at once. False if unknown.
  bool cancel(uint64_t id);
  // Removes a finished (running) request and releases its pages. InternalError otherwise.
  void finish(uint64_t id);

  StepPlan plan();
  // After the executor ran `plan`: computed += count for each; for each id in `appended` (a token
  // was sampled and kept), total += 1. Ids aborted or finished since the plan are skipped. A request
  // that sampled must be appended to or finished before the next plan() (else InternalError there).
  void on_step_done(const StepPlan& plan, const std::vector<uint64_t>& appended);

  size_t num_running() const;
  size_t num_waiting() const;
  int64_t num_preemptions() const { return preemptions_; }
  bool has_work() const { return num_running() + num_waiting() > 0; }

  struct Progress {
    int64_t computed = 0, total = 0, prompt = 0;
    bool running = false;
  };
  std::optional<Progress> progress(uint64_t id) const;

 private:
  struct Entry {
    uint64_t id = 0;
    kvcache::SequenceLayout layout;
    ChunkRule rule;
    int64_t prompt = 0, computed = 0, total = 0;  // tokens
    int32_t priority = 0;
    uint64_t arrival = 0;      // add() order
    int64_t waited_steps = 0;  // plan() calls spent waiting (aging); kept across preemptions
    bool running = false;
    bool fresh = false;          // admitted, not yet scheduled
    bool chunk_starved = false;  // its aligned prompt chunk found less than a block of budget
    std::shared_ptr<const kvcache::PrefixKey> prefix;
  };
  enum class Admission { kAdmitted, kBlocked, kUnservable };
  struct AdmissionView {
    Admission admission = Admission::kBlocked;
    int64_t cached_tokens = 0;      // the tokens an admission starts from (its cached prefix)
    int64_t max_cached_tokens = 0;  // add_sequence's bound that adopts exactly those
  };

  bool before(const Entry& a, const Entry& b) const;  // policy order
  void age_and_sort();
  void schedule_running(StepPlan& plan, int64_t& budget);
  bool aligned_prefill(const Entry& e) const { return e.rule.prompt_block > 1 && e.computed < e.prompt; }
  int64_t chunk(const Entry& e, int64_t budget) const;  // tokens e runs next (0: none this step)
  bool needs_logit_rows(const Entry& e) const { return e.rule.max_prompt_chunk > 0 && e.computed < e.prompt; }
  // What max_logit_rows leaves e this step: the budget it may take (kNoLimit when it needs none or
  // is the step's first), or 0 when it must wait for the next step.
  int64_t logit_rows_left(const Entry& e) const;
  bool outgrows_pool(const Entry& e, int64_t new_len) const;  // more pages than all but e's own
  bool make_room(Entry& e, int64_t count, StepPlan& plan);
  Entry& preempt_last(StepPlan& plan);
  void admit_waiting(StepPlan& plan, int64_t& budget);
  // Whether e would be admitted now, and from which cached prefix. Changes nothing.
  AdmissionView admission_of(const Entry& e, int64_t promised) const;
  void schedule(Entry& e, int64_t count, StepPlan& plan);
  Entry* find(uint64_t id);
  void remove(Entry& e);

  SchedulerConfig config_;
  kvcache::KvCacheManager& kv_;
  int64_t preemptions_ = 0;
  int64_t logit_rows_ = 0;  // this step's positions from chunks that need every logits row
  uint64_t next_arrival_ = 0;
  std::unordered_map<uint64_t, Entry> entries_;  // every live request (node addresses are stable)
  std::vector<Entry*> running_;  // policy order: the last one is the preemption victim
  std::deque<Entry*> waiting_;   // policy order (re-sorted each plan()): the front is admitted first
};

}  // namespace sparseserve
