#include "engine/scheduler.h"

#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "common/errors.h"

namespace sparseserve {

void SchedulerConfig::validate() const {
  if (max_num_seqs < 1) throw InvalidArgument(fmt::format("max_num_seqs is {}; it must be ≥ 1", max_num_seqs));
  if (max_num_batched_tokens < 1) {
    throw InvalidArgument(fmt::format("max_num_batched_tokens is {}; it must be ≥ 1", max_num_batched_tokens));
  }
  if (aging_steps < 1) throw InvalidArgument(fmt::format("aging_steps is {}; it must be ≥ 1", aging_steps));
  if (max_logit_rows < 1) throw InvalidArgument(fmt::format("max_logit_rows is {}; it must be ≥ 1", max_logit_rows));
}

Scheduler::Scheduler(SchedulerConfig config, kvcache::KvCacheManager& kv) : config_(config), kv_(kv) {
  config_.validate();
}

void Scheduler::add(uint64_t id, int64_t prompt_len, const kvcache::SequenceLayout& layout, int32_t priority,
                    ChunkRule rule, std::shared_ptr<const kvcache::PrefixKey> prefix) {
  if (entries_.contains(id)) throw InternalError(fmt::format("scheduler: request {} already exists", id));
  if (prompt_len < 1) throw InternalError(fmt::format("scheduler: request {} has prompt_len {}", id, prompt_len));
  // The manager is the judge of a layout: register and drop the sequence now, so a bad layout
  // fails here rather than in a later plan().
  kv_.add_sequence(id, layout);
  kv_.release(id);
  Entry& e = entries_[id];
  e.id = id;
  e.layout = layout;
  e.rule = rule;
  if (e.rule.prompt_block < 1 || e.rule.prompt_block > config_.max_num_batched_tokens) e.rule.prompt_block = 1;
  e.prompt = prompt_len;
  e.total = prompt_len;
  e.priority = priority;
  e.arrival = next_arrival_++;
  e.prefix = std::move(prefix);
  waiting_.push_back(&e);  // sorted into place by the next plan()
}

Scheduler::Entry* Scheduler::find(uint64_t id) {
  const auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : &it->second;
}

void Scheduler::remove(Entry& e) {
  kv_.release(e.id);  // no-op when the sequence holds nothing (waiting)
  if (e.running) {
    running_.erase(std::find(running_.begin(), running_.end(), &e));
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), &e));
  }
  const uint64_t id = e.id;
  entries_.erase(id);
}

void Scheduler::set_prefix(uint64_t id, std::shared_ptr<const kvcache::PrefixKey> prefix) {
  Entry* e = find(id);
  if (e == nullptr || e->running) {
    throw InternalError(fmt::format("scheduler: prefix of request {}, which is not waiting", id));
  }
  e->prefix = std::move(prefix);
}

bool Scheduler::cancel(uint64_t id) {
  Entry* e = find(id);
  if (e == nullptr) return false;
  remove(*e);
  return true;
}

void Scheduler::finish(uint64_t id) {
  Entry* e = find(id);
  if (e == nullptr) throw InternalError(fmt::format("scheduler: finish of unknown request {}", id));
  if (!e->running) throw InternalError(fmt::format("scheduler: finish of request {}, which is not running", id));
  remove(*e);
}

bool Scheduler::before(const Entry& a, const Entry& b) const {
  if (config_.priority) {
    const int64_t pa = a.priority - a.waited_steps / config_.aging_steps;
    const int64_t pb = b.priority - b.waited_steps / config_.aging_steps;
    if (pa != pb) return pa < pb;
  }
  return a.arrival < b.arrival;
}

StepPlan Scheduler::plan() {
  StepPlan plan;
  age_and_sort();
  int64_t budget = config_.max_num_batched_tokens;
  logit_rows_ = 0;
  schedule_running(plan, budget);
  // Pages were short this step: admitting now would only take them from the preempted requests.
  if (plan.preempted.empty()) admit_waiting(plan, budget);
  return plan;
}

void Scheduler::age_and_sort() {
  for (Entry* e : waiting_) ++e->waited_steps;
  const auto by_policy = [this](const Entry* a, const Entry* b) { return before(*a, *b); };
  std::sort(running_.begin(), running_.end(), by_policy);
  std::sort(waiting_.begin(), waiting_.end(), by_policy);
}

void Scheduler::schedule_running(StepPlan& plan, int64_t& budget) {
  // The first starved aligned chunk in the order (running, then the head of the queue) has a block
  // of the budget reserved: the requests before it get the rest.
  const Entry* reserved_for = nullptr;
  for (const Entry* e : running_) {
    if (e->chunk_starved) {
      reserved_for = e;
      break;
    }
  }
  // The queue's head only while a seat is free for it: with every seat taken, admit_waiting would not
  // look at it, and a block as large as the budget would stop every running request.
  if (reserved_for == nullptr && !waiting_.empty() && waiting_.front()->chunk_starved &&
      std::ssize(running_) < config_.max_num_seqs) {
    reserved_for = waiting_.front();
  }
  int64_t reserve = reserved_for != nullptr ? reserved_for->rule.prompt_block : 0;
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Entry& e = *running_[i];
    if (e.computed >= e.total) {
      throw InternalError(fmt::format("scheduler: request {} sampled but was neither appended to nor finished", e.id));
    }
    if (&e == reserved_for) reserve = 0;
    const int64_t rows_left = logit_rows_left(e);
    if (rows_left == 0) {  // the step's logits rows are taken: next step
      ++i;
      continue;
    }
    const int64_t count = chunk(e, std::min(budget - reserve, rows_left));
    if (count == 0) {  // its next aligned prompt chunk does not fit what is left, or the reserve
      e.chunk_starved = aligned_prefill(e);
      ++i;
      continue;
    }
    e.chunk_starved = false;
    if (outgrows_pool(e, e.computed + count)) {
      // No preemption could make room: the others keep their pages and e is reported instead.
      const uint64_t id = e.id;
      remove(e);
      plan.unservable.push_back(id);
      continue;  // running_[i] is now the next request
    }
    if (!make_room(e, count, plan)) return;  // e was preempted: it was the last running request
    schedule(e, count, plan);
    budget -= count;
    ++i;
  }
}

int64_t Scheduler::chunk(const Entry& e, int64_t budget) const {
  if (budget <= 0) return 0;
  int64_t end = e.total;
  if (e.rule.recompute_as_decode) end = e.computed < e.prompt ? e.prompt : e.computed + 1;
  int64_t count = std::min(end - e.computed, budget);
  if (e.rule.max_prompt_chunk > 0 && e.computed < e.prompt) count = std::min(count, e.rule.max_prompt_chunk);
  const int64_t stop = e.computed + count;
  if (stop >= std::min(e.prompt, end) || e.rule.prompt_block == 1) return count;
  // Inside the prompt: back to the last block boundary (computed is on one: every earlier chunk
  // that stopped inside the prompt stopped on one).
  return std::max<int64_t>(0, stop / e.rule.prompt_block * e.rule.prompt_block - e.computed);
}

int64_t Scheduler::logit_rows_left(const Entry& e) const {
  constexpr int64_t kNoLimit = std::numeric_limits<int64_t>::max();
  if (!needs_logit_rows(e) || logit_rows_ == 0) return kNoLimit;
  const int64_t left = config_.max_logit_rows - logit_rows_;
  // An aligned chunk needs a whole block of rows.
  return left >= (e.rule.prompt_block > 1 ? e.rule.prompt_block : 1) ? left : 0;
}

bool Scheduler::outgrows_pool(const Entry& e, int64_t new_len) const {
  return kv_.pages_needed(e.id, new_len) > kv_.num_pages() - kv_.sequence(e.id).pages_held();
}

// Preempts from the back of running_ until e's chunk fits. False when e itself had to go.
bool Scheduler::make_room(Entry& e, int64_t count, StepPlan& plan) {
  while (!kv_.can_allocate(e.id, e.computed + count)) {
    if (&preempt_last(plan) == &e) return false;
  }
  return true;
}

Scheduler::Entry& Scheduler::preempt_last(StepPlan& plan) {
  check(!running_.empty(), "scheduler: preemption with no running request");
  Entry& e = *running_.back();
  running_.pop_back();
  kv_.release(e.id);
  e.running = false;
  e.computed = 0;
  const auto by_policy = [this](const Entry* a, const Entry* b) { return before(*a, *b); };
  waiting_.insert(std::upper_bound(waiting_.begin(), waiting_.end(), &e, by_policy), &e);
  plan.preempted.push_back(e.id);
  ++preemptions_;
  return e;
}

void Scheduler::admit_waiting(StepPlan& plan, int64_t& budget) {
  // Pages the running requests still need to reach their `total` (the rest of a chunked prefill or
  // recompute) and to hold the token their next step samples: promised to them, so an admission
  // cannot take them and force a preemption later (a decode crossing into a new block the step
  // after a long prompt was admitted preempted that prompt, its prefill thrown away).
  int64_t promised = 0;
  for (const Entry* r : running_) promised += kv_.pages_needed(r->id, r->total + 1);
  while (!waiting_.empty() && budget > 0 && std::ssize(running_) < config_.max_num_seqs) {
    Entry& e = *waiting_.front();
    const int64_t rows_left = logit_rows_left(e);
    if (rows_left == 0) return;  // the head waits for the next step's logits rows
    const int64_t count = chunk(e, std::min(budget, rows_left));
    if (count == 0) {  // its first aligned chunk needs more of the budget: the head waits, and has
      // a block reserved next step, unless the pages block it: a head the pages block keeps
      // no reservation, which would hold back the running requests whose progress frees the pages
      // (with a block as large as the budget, all of them: no plan would ever hold a token).
      e.chunk_starved = aligned_prefill(e) && admission_of(e, promised).admission != Admission::kBlocked;
      return;
    }
    const AdmissionView view = admission_of(e, promised);
    if (view.admission == Admission::kBlocked) {  // the head is never skipped
      e.chunk_starved = false;  // pages hold it, not the budget: no reservation (above)
      return;
    }
    if (view.admission == Admission::kUnservable) {
      waiting_.pop_front();
      plan.unservable.push_back(e.id);
      const uint64_t id = e.id;
      entries_.erase(id);
      continue;
    }
    // A cached prefix ends on a prompt_block boundary too, so the chunks after it follow the rule.
    // The head leaves the queue only once registered: should this throw, it is still waiting, and
    // cancelling it releases whatever the manager holds for it.
    const int64_t cached = view.cached_tokens;
    const int64_t hit = kv_.add_sequence(e.id, e.layout, e.prefix, view.max_cached_tokens, e.rule.prompt_block);
    check(hit == cached, "scheduler: the KV cache adopted other than its preview");
    waiting_.pop_front();
    e.running = true;
    e.fresh = true;
    e.chunk_starved = false;
    running_.push_back(&e);
    e.computed = cached;
    // The chunk again from the cached prefix: it ends on a prompt_block boundary, so a budget that
    // held the first chunk from nothing holds one from there.
    const int64_t from_cache = cached > 0 ? chunk(e, std::min(budget, rows_left)) : count;
    check(from_cache >= 1, "scheduler: no chunk after a cached prefix");
    schedule(e, from_cache, plan);
    budget -= from_cache;
    promised += kv_.pages_needed(e.id, e.total + 1);
  }
}

// Whether e would be admitted now, from the manager's preview of its registration (nothing changes:
// a request not admitted neither evicts cached blocks nor takes pages). Unservable: even the whole,
// empty pool could not hold the prompt plus one generated token (or all e already holds). Blocked:
// the free pages, less those promised to running requests, cannot hold all of e's `total` tokens
// (its own next token is not asked for: alone, e may fill the pool). Admitting on the first chunk
// alone (as vLLM V1 does without prefix caching) lets a long prompt beside a long decode prefill,
// run out of pages, preempt itself as the newest request and start over, step after step; vLLM V0
// also admitted whole prompts.
// A cached prefix never keeps out a request that fits without it: adopting one under streaming
// heads also pins the snapshots its ring copies from and takes the ring's pages at once, which can
// block a request that the pool holds when it starts from nothing (and, with nothing running,
// block it for good). Such a request is admitted without its prefix.
Scheduler::AdmissionView Scheduler::admission_of(const Entry& e, int64_t promised) const {
  const auto judge = [&](int64_t max_cached_tokens) {
    const kvcache::KvCacheManager::AdoptionPreview view =
        kv_.preview_sequence(e.layout, e.prefix, max_cached_tokens, e.rule.prompt_block);
    AdmissionView a{.cached_tokens = view.cached_tokens, .max_cached_tokens = max_cached_tokens};
    // Pages it would adopt from the prefix cache count: they fill the pool as well.
    if (view.pages_needed(std::max(e.total, e.prompt + 1)) + view.pages_held > kv_.num_pages()) {
      a.admission = Admission::kUnservable;
    } else if (view.pages_needed(e.total) + promised > view.free_pages) {
      a.admission = Admission::kBlocked;
    } else {
      a.admission = Admission::kAdmitted;
    }
    return a;
  };
  const AdmissionView with_prefix = judge(e.total - 1);
  if (with_prefix.admission != Admission::kBlocked || with_prefix.cached_tokens == 0) return with_prefix;
  const AdmissionView fresh = judge(0);
  return fresh.admission == Admission::kAdmitted ? fresh : with_prefix;
}

void Scheduler::schedule(Entry& e, int64_t count, StepPlan& plan) {
  kv_.allocate(e.id, e.computed + count);
  if (needs_logit_rows(e)) logit_rows_ += count;
  plan.seqs.push_back(ScheduledSeq{.id = e.id,
                                   .start = e.computed,
                                   .count = count,
                                   .sample = e.computed + count == e.total,
                                   .resumed = e.fresh});
  e.fresh = false;
  plan.num_tokens += count;
}

void Scheduler::on_step_done(const StepPlan& plan, const std::vector<uint64_t>& appended) {
  for (const ScheduledSeq& s : plan.seqs) {
    Entry* e = find(s.id);
    if (e == nullptr) continue;  // aborted or finished since the plan
    if (!e->running || e->computed != s.start || s.start + s.count > e->total) {
      throw InternalError(fmt::format("scheduler: stale plan for request {} (computed {}, planned start {})", s.id,
                                      e->computed, s.start));
    }
    e->computed += s.count;
  }
  for (const uint64_t id : appended) {
    Entry* e = find(id);
    if (e == nullptr) continue;
    if (!e->running || e->computed != e->total) {
      throw InternalError(fmt::format("scheduler: token appended to request {}, which did not sample", id));
    }
    ++e->total;
  }
}

size_t Scheduler::num_running() const { return running_.size(); }
size_t Scheduler::num_waiting() const { return waiting_.size(); }

std::optional<Scheduler::Progress> Scheduler::progress(uint64_t id) const {
  const auto it = entries_.find(id);
  if (it == entries_.end()) return std::nullopt;
  const Entry& e = it->second;
  return Progress{.computed = e.computed, .total = e.total, .prompt = e.prompt, .running = e.running};
}

}  // namespace sparseserve
