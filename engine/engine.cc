// Engine: the request lifecycle around one loop thread.
//   submit() validates and queues → loop: admit, plan (Scheduler), run (the backend's StepRunner),
//   sample, detokenize, stop checks, emit deltas → finish/abort releases pages at once.
#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <random>
#include <thread>
#include <unordered_map>

#include "engine/choice_constraint.h"
#include "engine/json_constraint.h"
#include "engine/live_request.h"
#include "engine/prefix_rules.h"
#include "engine/grammar.h"
#include "engine/regex_dfa.h"
#include "engine/scheduler.h"
#include "engine/text_constraint.h"
#include "engine/token_step.h"
#include "kvcache/capacity.h"

namespace sparseserve {

namespace {
using clock_type = EngineClock;
double seconds(clock_type::duration d) { return std::chrono::duration<double>(d).count(); }
}  // namespace

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kAbort: return "abort";
    case FinishReason::kError: return "error";
  }
  return "";
}

void EngineConfig::validate() const {
  if (max_num_seqs < 1) throw InvalidArgument("max_num_seqs must be at least 1");
  if (max_num_batched_tokens < 1) throw InvalidArgument("max_num_batched_tokens must be at least 1");
  if (max_waiting < 1) throw InvalidArgument("max_waiting must be at least 1");
  if (output_buffer < 1) throw InvalidArgument("output_buffer must be at least 1");
}

StepLimits EngineConfig::step_limits(const ModelProfiles& profiles) const {
  StepLimits limits{max_num_batched_tokens, max_num_seqs, {}};
  for (const auto& [name, profile] : profiles.profiles) {
    if (profile.prefill.dynamic) limits.dynamic_prefill.emplace_back(profile.prefill.block_tokens, profile.prefill.stride);
  }
  return limits;
}

namespace {

// The last delta of a request the loop no longer holds: an error, then the stream closes.
void end_with_error(RequestStreamImpl& stream, const std::string& error) {
  RequestOutput out;
  out.finished = true;
  out.finish_reason = FinishReason::kError;
  out.error = error;
  stream.push(std::move(out));
  stream.close();
}

}  // namespace

struct Engine::Impl {
  Impl(const Model& m, ModelProfiles p, EngineConfig c, StepBackend b);

  const Model& model;
  const ModelProfiles profiles;
  const EngineConfig config;
  const StepBackend step_backend;
  EngineMetrics metrics;
  kvcache::PageShape shape;
  kvcache::KvCacheManager kv;
  Scheduler scheduler;
  std::unique_ptr<StepRunner> backend;

  // Shared with submitters (guarded by mu).
  std::mutex mu;
  std::condition_variable wake;
  std::deque<std::unique_ptr<LiveRequest>> incoming;
  // Aborts by key, not by request id: an abort queued for a request that finishes before the loop
  // sees it must not hit a later request that reuses the id.
  std::vector<uint64_t> abort_keys;
  std::unordered_map<std::string, uint64_t> live_ids;  // request id -> key (guarded by mu)
  // Drops id's entry if it still names request `key` (a cancelled request's id may have been taken
  // again by a newer request). Called with mu held.
  void forget_id(const std::string& id, uint64_t key) {
    if (const auto it = live_ids.find(id); it != live_ids.end() && it->second == key) live_ids.erase(it);
  }
  bool accepting = true, stopping = false;
  uint64_t next_key = 1;
  std::atomic<int64_t> pages_in_use{0};

  // Loop-only state.
  std::unordered_map<uint64_t, std::unique_ptr<LiveRequest>> live;
  std::unique_ptr<VocabularyBytes> vocab_bytes;  // built at the first constrained request
  const VocabularyBytes& token_bytes() {
    if (!vocab_bytes) vocab_bytes = std::make_unique<VocabularyBytes>(model.tokenizer, static_cast<int32_t>(model.config.vocab_size));
    return *vocab_bytes;
  }
  std::vector<uint64_t> step_keys;  // the requests the current step's plan names (the loop fails them if it throws)
  std::vector<float> step_logits;   // the step's logits rows, reused (the backend sizes it)
  std::thread thread;

  void loop();
  void admit_incoming();
  std::shared_ptr<const kvcache::PrefixKey> prefix_key(LiveRequest& r) const;
  // Its first tokens whose K/V may be shared (engine/prefix_rules.h).
  static size_t cacheable(const LiveRequest& r) { return cacheable_tokens(*r.profile, r.prompt_len, r.tokens.size()); }
  // The prefix cache's pending page copies (KvCacheManager::take_copies), run by the backend.
  void run_page_copies() {
    const std::vector<kvcache::PageCopy> copies = kv.take_copies();
    if (copies.empty()) return;
    try {
      backend->copy_pages(copies);
    } catch (...) {
      kv.copies_failed(copies);  // the step fails its requests; no snapshot keeps stale contents
      throw;
    }
  }
  void apply_aborts();
  void step();
  // error: kError's message; request_error: the request's own settings caused it (RequestOutput).
  void finish(LiveRequest& r, FinishReason reason, const std::string& stop_reason, const std::string& error = {},
              bool request_error = false);
  void release(uint64_t key);
  void fail(uint64_t key, const std::string& error);
  void update_counts();  // requests running and waiting, pages in use (cheap: no walk over requests)
  void update_gauges();  // the counts and the KV savings
};

Engine::Impl::Impl(const Model& m, ModelProfiles p, EngineConfig c, StepBackend b)
    : model(m),
      profiles(std::move(p)),
      config(std::move(c)),
      step_backend(std::move(b)),
      shape{static_cast<int32_t>(m.config.head_dim), profiles.kv_cache.page_tokens,
            profiles.kv_cache.logical_page_tokens, step_backend.bytes_per_element, step_backend.with_metadata},
      kv(profiles.kv_cache, kvcache::pages_for_budget(config.kv_cache_bytes, shape), config.enable_prefix_caching),
      scheduler(SchedulerConfig{config.max_num_seqs, config.max_num_batched_tokens, config.priority_scheduling, 64}, kv) {
  const size_t bytes = shape.page_bytes() * static_cast<size_t>(kv.num_pages());
  backend = step_backend.make(model, kv, config.step_limits(profiles));
  metrics.kv_pages_total = kv.num_pages();
  metrics.kv_bytes_per_page = static_cast<int64_t>(shape.page_bytes());
  spdlog::info("engine ({}): {} KV pages of {} tokens ({:.1f} MiB), profiles: {}, default {}, prefix caching {}",
               step_backend.name, kv.num_pages(), profiles.kv_cache.page_tokens, static_cast<double>(bytes) / (1 << 20),
               profiles.profiles.size(), profiles.default_profile, kv.prefix_caching() ? "on" : "off");
}

Engine::Engine(const Model& model, ModelProfiles profiles, EngineConfig config, StepBackend backend) {
  config.validate();
  if (backend.unsupported_model) {
    if (const std::string why = backend.unsupported_model(model, profiles.kv_cache); !why.empty()) {
      throw InvalidArgument("backend " + backend.name + ": " + why);
    }
  }
  if (const std::string why = backend.unsupported(model, profiles.get(profiles.default_profile)); !why.empty()) {
    throw InvalidArgument("default sparsity profile '" + profiles.default_profile + "': " + why);
  }
  // A dynamic prefill's prompt chunks follow its blocks so that its masks do not depend on how a
  // prompt is chunked: a block must fit in a step.
  for (const auto& [name, profile] : profiles.profiles) {
    if (profile.prefill.dynamic && profile.prefill.block_tokens > config.max_num_batched_tokens) {
      throw InvalidArgument("sparsity profile '" + name + "': prefill block_tokens " +
                            std::to_string(profile.prefill.block_tokens) + " is over max_num_batched_tokens " +
                            std::to_string(config.max_num_batched_tokens) + ": its prompt chunks could not follow its blocks");
    }
  }
  backend.check_kv_bytes(model, config.kv_cache_bytes, config.step_limits(profiles));
  try {
    impl_ = std::make_unique<Impl>(model, std::move(profiles), std::move(config), std::move(backend));
  } catch (const std::bad_alloc&) {
    throw InvalidArgument("kv_cache_bytes: the KV cache (and the engine's buffers) could not be allocated");
  }
  impl_->thread = std::thread([this] { impl_->loop(); });
}

Engine::~Engine() { shutdown(std::chrono::milliseconds(0)); }

const Model& Engine::model() const { return impl_->model; }
const ModelProfiles& Engine::profiles() const { return impl_->profiles; }
const EngineConfig& Engine::config() const { return impl_->config; }
const EngineMetrics& Engine::metrics() const { return impl_->metrics; }
const std::string& Engine::backend() const { return impl_->step_backend.name; }
int64_t Engine::kv_pages_in_use() const { return impl_->pages_in_use.load(); }

namespace {

// The pages one sequence of `profile` takes at each length, in a cache of the engine's page size.
kvcache::SequenceKv sequence_probe(int32_t page_tokens, const kvcache::SparsityProfile& profile) {
  const auto layout = kvcache::SequenceLayout::from_roles(profile.roles, profile.streaming);
  return kvcache::SequenceKv(page_tokens, layout.retrieval_slots, layout.streaming_slots,
                             layout.streaming ? std::optional(kvcache::StreamingGeometry(page_tokens, *layout.streaming))
                                              : std::nullopt);
}

}  // namespace

int64_t Engine::max_sequence_tokens(const std::string& profile_name) const {
  const Impl& e = *impl_;
  const kvcache::SequenceKv probe = sequence_probe(e.kv.config().page_tokens, e.profiles.get(profile_name));
  // pages_needed grows with the length: the longest length whose pages fit, by bisection.
  int64_t lo = 0, hi = e.model.config.max_context;
  while (lo < hi) {
    const int64_t mid = hi - (hi - lo) / 2;
    if (probe.pages_needed(mid) <= e.kv.num_pages()) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

std::shared_ptr<RequestStream> Engine::submit(Request request) {
  Impl& e = *impl_;
  const ModelConfig& c = e.model.config;
  const auto n = static_cast<int64_t>(request.prompt.size());
  if (n == 0) throw InvalidArgument("the prompt is empty");
  if (n >= c.max_context) {
    throw InvalidArgument("This model's maximum context length is " + std::to_string(c.max_context) +
                          " tokens; the prompt has " + std::to_string(n) + " tokens, which leaves no room to generate");
  }
  for (int32_t t : request.prompt) {
    if (t < 0 || t >= c.vocab_size) throw InvalidArgument("token id " + std::to_string(t) + " is outside the vocabulary");
  }
  if (request.max_tokens < 0) throw InvalidArgument("max_tokens must be non-negative");
  if (request.min_tokens < 0 || request.min_tokens > request.max_tokens) {
    throw InvalidArgument("min_tokens must be between 0 and max_tokens (" + std::to_string(request.max_tokens) +
                          "), got " + std::to_string(request.min_tokens));
  }
  if (request.logprobs > 20) throw InvalidArgument("logprobs must be at most 20");
  if (request.prompt_logprobs > 20) throw InvalidArgument("prompt_logprobs must be at most 20");
  request.sampling.validate(c.vocab_size);
  const auto check_ids = [&](std::span<const int32_t> ids, const char* what) {
    for (int32_t t : ids) {
      if (t < 0 || t >= c.vocab_size) throw InvalidArgument(std::string(what) + " " + std::to_string(t) + " is outside the vocabulary");
    }
  };
  check_ids(request.stop_token_ids, "stop token id");
  check_ids(request.allowed_token_ids, "allowed token id");
  for (const auto& seq : request.bad_words) {
    if (seq.empty()) throw InvalidArgument("a bad_words token sequence is empty");
    check_ids(seq, "bad_words token id");
  }
  if (request.output_constraints() > 1) {
    throw InvalidArgument("json_object, a json_schema, choices, a regex and a grammar exclude each other");
  }
  if (request.choices && request.choices->empty()) throw InvalidArgument("the list of choices is empty");
  if (request.end_of_turn < -1 || request.end_of_turn >= c.vocab_size) {
    throw InvalidArgument("end-of-turn token id " + std::to_string(request.end_of_turn) + " is outside the vocabulary");
  }
  const kvcache::SparsityProfile& profile =
      e.profiles.get(request.sparsity.empty() ? e.profiles.default_profile : request.sparsity);
  if (const std::string why = e.step_backend.unsupported(e.model, profile); !why.empty()) {
    throw InvalidArgument("sparsity profile '" + profile.name + "': " + why);
  }
  {
    const int32_t need = sequence_probe(e.kv.config().page_tokens, profile).pages_needed(n + 1);
    if (need > e.kv.num_pages()) {
      throw InvalidArgument("the prompt needs " + std::to_string(need) + " KV cache pages but the cache holds " +
                            std::to_string(e.kv.num_pages()) + ": this server's KV cache holds sequences of at most " +
                            std::to_string(max_sequence_tokens(profile.name)) + " tokens under sparsity profile '" +
                            profile.name + "'");
    }
  }

  auto r = std::make_unique<LiveRequest>(LiveRequest{
      0, std::move(request), &profile, {}, n, 0, Sampler(SamplingParams{}, {}),
      IncrementalDetokenizer(e.model.tokenizer, true), StopStringFilter({}), {}, {}, nullptr, clock_type::now(), {}, {}, false, false, 0, -1, false, -1, {}, 0, false, {}, {}, 0, {}});
  r->tokens = r->req.prompt;
  r->max_new = std::min<int64_t>(r->req.max_tokens, c.max_context - n);
  r->sampler = Sampler(r->req.sampling, r->req.prompt);
  r->draw_seed = r->req.sampling.seed ? *r->req.sampling.seed : std::random_device{}();
  r->detok = IncrementalDetokenizer(e.model.tokenizer, r->req.skip_special_tokens);
  r->stops = StopStringFilter(r->req.stop);
  if (r->req.json_object) r->json.emplace(JsonPrefix(/*root_object=*/true));
  if (r->req.json_schema) r->json.emplace(JsonPrefix(*r->req.json_schema));
  if (r->req.choices) r->language = std::make_unique<ChoiceText>(r->req.choices);
  if (r->req.regex) r->language = std::make_unique<RegexText>(r->req.regex);
  if (r->req.grammar) r->language = std::make_unique<GrammarText>(r->req.grammar);
  r->stop_ids = r->req.stop_token_ids;
  if (!r->req.ignore_eos) r->implicit_stops = c.eos_ids;
  // The end of turn stops as EOS does, and like it not under ignore_eos (vLLM: every EOS id of the
  // generation config, the chat end of turn among them, is ignored then).
  if (r->req.end_of_turn >= 0 && !r->req.ignore_eos) r->implicit_stops.push_back(r->req.end_of_turn);
  if (r->req.min_tokens > 0 && !r->req.allowed_token_ids.empty()) {
    // Before min_tokens no stop id may be drawn: some allowed id must be none.
    const auto is_stop = [&](int32_t t) {
      return std::find(r->stop_ids.begin(), r->stop_ids.end(), t) != r->stop_ids.end() ||
             std::find(r->implicit_stops.begin(), r->implicit_stops.end(), t) != r->implicit_stops.end();
    };
    if (std::all_of(r->req.allowed_token_ids.begin(), r->req.allowed_token_ids.end(), is_stop)) {
      throw InvalidArgument("min_tokens with allowed_token_ids that are all stop tokens leaves nothing to sample");
    }
  }

  std::lock_guard lock(e.mu);
  if (!e.accepting) throw EngineUnavailable("the server is shutting down");
  if (e.live_ids.contains(r->req.id)) throw InvalidArgument("request id '" + r->req.id + "' is already in use");
  // Waiting = live requests not running (in `incoming` or the scheduler's queue). Counted from
  // state guarded by mu and the running count taken when the step was planned: a request admitted
  // since still counts as waiting (towards 429), one running and cancelled since as running (towards
  // admitting, by the cancelled ones, until the next step).
  const int64_t waiting = static_cast<int64_t>(e.live_ids.size()) - e.metrics.requests_running.load();
  if (waiting >= e.config.max_waiting) {
    throw QueueFull("the request queue is full (" + std::to_string(e.config.max_waiting) + " waiting); retry later");
  }
  r->key = e.next_key++;
  // A cancel (the client left) frees the request's id and its place in the queue at once: the loop
  // may be inside a long step before it drops the request.
  r->stream = std::make_shared<RequestStreamImpl>(r->req.id, static_cast<size_t>(e.config.output_buffer),
                                                  [&e, key = r->key](const std::string& id) {
                                                    std::lock_guard l(e.mu);
                                                    e.forget_id(id, key);
                                                    e.abort_keys.push_back(key);
                                                    e.wake.notify_one();
                                                  });
  e.live_ids.emplace(r->req.id, r->key);
  auto stream = r->stream;
  e.incoming.push_back(std::move(r));
  e.metrics.requests_waiting += 1;
  e.wake.notify_one();
  return stream;
}

bool Engine::abort_request(const std::string& id) {
  std::lock_guard lock(impl_->mu);
  const auto it = impl_->live_ids.find(id);
  if (it == impl_->live_ids.end()) return false;
  impl_->abort_keys.push_back(it->second);
  impl_->live_ids.erase(it);  // free at once, as a cancel
  impl_->wake.notify_one();
  return true;
}

void Engine::shutdown(std::chrono::milliseconds grace) {
  Impl& e = *impl_;
  {
    std::lock_guard lock(e.mu);
    e.accepting = false;
  }
  const auto deadline = clock_type::now() + grace;
  while (clock_type::now() < deadline) {
    {
      std::lock_guard lock(e.mu);
      if (e.live_ids.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  {
    std::lock_guard lock(e.mu);
    for (const auto& [id, key] : e.live_ids) e.abort_keys.push_back(key);
    e.stopping = true;
    e.wake.notify_one();
  }
  if (e.thread.joinable()) e.thread.join();
}

void Engine::Impl::loop() {
  while (true) {
    {
      std::unique_lock lock(mu);
      wake.wait_for(lock, std::chrono::milliseconds(50), [&] {
        return stopping || !incoming.empty() || !abort_keys.empty() || scheduler.has_work();
      });
    }
    apply_aborts();
    admit_incoming();
    {
      std::lock_guard lock(mu);
      if (stopping && live.empty() && incoming.empty()) break;
    }
    if (!scheduler.has_work()) {
      update_gauges();
      continue;
    }
    step_keys.clear();
    try {
      step();
    } catch (const std::exception& ex) {
      // A broken invariant inside the step: fail the requests its plan named (every live request
      // when the plan itself failed), keep serving.
      spdlog::error("engine step failed: {}", ex.what());
      std::vector<uint64_t> keys = step_keys;
      if (keys.empty()) {
        for (const auto& [key, r] : live) keys.push_back(key);
      }
      for (uint64_t key : keys) fail(key, std::string("internal error: ") + ex.what());
    }
    update_gauges();
  }
}

void Engine::Impl::admit_incoming() {
  std::deque<std::unique_ptr<LiveRequest>> batch;
  {
    std::lock_guard lock(mu);
    batch.swap(incoming);
  }
  for (auto& r : batch) {
    const kvcache::SparsityProfile& p = *r->profile;
    const auto layout = kvcache::SequenceLayout::from_roles(p.roles, p.streaming);
    ChunkRule rule;
    if (p.prefill.runs_on(r->prompt_len)) rule.prompt_block = p.prefill.block_tokens;
    // Positions first decoded under page selection, or outside a dynamic prefill's masks, come
    // back the same way after a preemption.
    rule.recompute_as_decode = p.decode.enabled || p.prefill.dynamic;
    // Prompt logprobs need logits at every prompt position: a chunk of at most 256 tokens holds
    // 256 × vocabulary floats of them (a step of several such chunks holds up to
    // max_num_batched_tokens rows, as vLLM's prompt logprobs do).
    if (r->req.prompt_logprobs >= 0) rule.max_prompt_chunk = (256 + rule.prompt_block - 1) / rule.prompt_block * rule.prompt_block;
    const uint64_t key = r->key;
    try {
      scheduler.add(key, r->prompt_len, layout, r->req.priority, rule, prefix_key(*r));
    } catch (const std::exception& ex) {  // a broken invariant: this request ends, the others go on
      spdlog::error("engine: admitting request {} failed: {}", r->req.id, ex.what());
      scheduler.cancel(key);
      {
        std::lock_guard lock(mu);
        forget_id(r->req.id, key);
      }
      end_with_error(*r->stream, std::string("internal error: ") + ex.what());
      continue;
    }
    live.emplace(key, std::move(r));
  }
}

// The request's tokens for the prefix cache, or null with the cache off: its prompt, and after a
// preemption its cacheable generated tokens too, so it resumes from their blocks. (Under streaming
// heads the cache keeps copies of ring pages: KvCacheManager.) A dynamic prefill's K/V differ from a
// dense one's: such prompts share only with each other (a query block's mask depends on the blocks
// up to it alone, so their whole blocks are shared alike: prefix_rules.h). Prompt logprobs need
// every prompt position run: such a request registers its blocks but starts from none (as vLLM skips
// the cache for it).
std::shared_ptr<const kvcache::PrefixKey> Engine::Impl::prefix_key(LiveRequest& r) const {
  if (!kv.prefix_caching()) return nullptr;
  auto key = std::make_shared<kvcache::PrefixKey>();
  key->profile = r.profile->name;  // a name holds no space or NUL: the parts below stay apart
  if (r.profile->prefill.runs_on(r.prompt_len)) key->profile += " dynamic";
  if (!r.req.cache_salt.empty()) key->profile += '\0' + r.req.cache_salt;
  const size_t lookup = std::max(static_cast<size_t>(r.prompt_len), cacheable(r));
  key->tokens.assign(r.tokens.begin(), r.tokens.begin() + static_cast<std::ptrdiff_t>(lookup));
  key->match = r.req.prompt_logprobs < 0;
  r.prefix_lookup = key->match;
  return key;
}

void Engine::Impl::apply_aborts() {
  std::vector<uint64_t> keys;
  {
    std::lock_guard lock(mu);
    keys.swap(abort_keys);
  }
  if (keys.empty()) return;
  admit_incoming();  // a request aborted while still in `incoming` is released like any other
  for (const uint64_t key : keys) {
    const auto it = live.find(key);
    if (it == live.end()) continue;  // it has finished already
    try {
      finish(*it->second, FinishReason::kAbort, "");
    } catch (const std::exception& ex) {
      fail(key, std::string("internal error while aborting: ") + ex.what());
    }
  }
}

void Engine::Impl::release(uint64_t key) {
  auto it = live.find(key);
  if (it == live.end()) return;
  scheduler.cancel(key);  // false when the scheduler has dropped it already (plan().unservable)
  if (it->second->bound) backend->release(key);
  {
    std::lock_guard lock(mu);
    forget_id(it->second->req.id, key);
  }
  live.erase(it);
}

void Engine::Impl::finish(LiveRequest& r, FinishReason reason, const std::string& stop_reason, const std::string& error,
                          bool request_error) {
  RequestOutput out;
  out.stop_reason = stop_reason;
  if (reason != FinishReason::kAbort && reason != FinishReason::kError && !r.text_complete) {
    // The text still held back: the bytes of an incomplete character (U+FFFD), then what the stop
    // filter kept as a possible start of a stop string. A stop string these complete ends the text
    // as any other does (once min_tokens allows one): the reason is then that stop.
    const bool may_stop = static_cast<int64_t>(r.tokens.size()) - r.prompt_len >= r.req.min_tokens;
    const auto res = r.stops.push(r.detok.flush(), may_stop);
    out.text = res.text;
    if (res.stopped) {
      reason = FinishReason::kStop;
      out.stop_reason = res.matched;
      if (r.req.include_stop_str_in_output) out.text += res.matched;
    } else {
      out.text += r.stops.flush();
    }
  }
  take_prompt_logprobs(r, out);
  out.finished = true;
  out.finish_reason = reason;
  out.stop_token = r.stop_token;
  out.error = error;
  out.request_error = request_error;
  out.prompt_tokens = r.prompt_len;
  out.cached_tokens = std::max<int64_t>(0, r.cached_tokens);
  out.completion_tokens = static_cast<int64_t>(r.tokens.size()) - r.prompt_len;

  const auto now = clock_type::now();
  metrics.e2e_request_latency_seconds.observe(seconds(now - r.arrival));
  metrics.requests_finished[static_cast<int>(reason)] += 1;
  const int64_t gen = static_cast<int64_t>(r.tokens.size()) - r.prompt_len;
  spdlog::info("request {} {}: prompt {} tokens, generated {}, ttft {:.3f} s, e2e {:.3f} s, profile {}{}", r.req.id,
               finish_reason_name(reason), r.prompt_len, gen,
               gen > 0 ? seconds(r.first_token - r.arrival) : 0.0, seconds(now - r.arrival), r.profile->name,
               error.empty() ? "" : " (" + error + ")");
  // Forget the id (and free the pages) before the client sees the end, so an Abort that follows
  // the final delta finds nothing to abort.
  const std::shared_ptr<RequestStreamImpl> stream = r.stream;
  release(r.key);
  stream->push(std::move(out));
  stream->close();
}

// Ends a request with an error, even when finish() itself throws part-way: the request then leaves
// the loop's tables by hand and its client still gets the error, so nothing is lost.
void Engine::Impl::fail(uint64_t key, const std::string& error) {
  const auto it = live.find(key);
  if (it == live.end()) return;
  const std::shared_ptr<RequestStreamImpl> stream = it->second->stream;
  try {
    finish(*it->second, FinishReason::kError, "", error);
    return;
  } catch (const std::exception& ex) {
    spdlog::error("engine: ending request {} failed too: {}", it->second->req.id, ex.what());
  }
  try {
    scheduler.cancel(key);
  } catch (const std::exception& ex) {
    spdlog::error("engine: dropping request {} from the scheduler: {}", key, ex.what());
  }
  if (const auto left = live.find(key); left != live.end()) {
    if (left->second->bound) {
      try {
        backend->release(key);
      } catch (const std::exception& ex) {
        spdlog::error("engine: releasing request {}'s attention state: {}", key, ex.what());
      }
    }
    {
      std::lock_guard lock(mu);
      forget_id(left->second->req.id, key);
    }
    live.erase(left);
  }
  end_with_error(*stream, error);
}

void Engine::Impl::step() {
  const StepPlan plan = scheduler.plan();
  // The plan admitted requests and took their pages: the counts (and submit's count of waiting
  // requests, which reads requests_running) say so now, not after the step, which may be long (a CPU
  // prefill). The savings wait for the step's end.
  update_counts();
  for (const ScheduledSeq& s : plan.seqs) step_keys.push_back(s.id);
  step_keys.insert(step_keys.end(), plan.unservable.begin(), plan.unservable.end());
  // Preempted requests did not run: a failed step names one only while its release runs.
  for (uint64_t key : plan.unservable) {
    auto it = live.find(key);
    if (it == live.end()) continue;
    LiveRequest& r = *it->second;
    if (static_cast<int64_t>(r.tokens.size()) > r.prompt_len) {
      // Its prompt fitted, then its generated tokens outgrew the whole KV cache: the cache's size is
      // its context limit, so it ends by length with everything it generated (llama.cpp stops a
      // sequence whose context is full the same way).
      spdlog::warn("request {}: {} tokens fill the whole KV cache ({} pages); it ends by length", r.req.id,
                   r.tokens.size(), kv.num_pages());
      finish(r, FinishReason::kLength, "");
    } else {
      finish(r, FinishReason::kError, "", "the request does not fit the KV cache");
    }
  }
  for (uint64_t key : plan.preempted) {
    metrics.num_preemptions += 1;
    auto it = live.find(key);
    if (it == live.end()) continue;
    if (it->second->bound) {
      step_keys.push_back(key);
      backend->release(key);
      it->second->bound = false;
      step_keys.pop_back();
    }
    if (kv.prefix_caching()) scheduler.set_prefix(key, prefix_key(*it->second));  // its answer so far too
  }
  if (plan.empty()) return;

  std::vector<ForwardSeq> batch;
  batch.reserve(plan.seqs.size());
  for (const ScheduledSeq& s : plan.seqs) {
    LiveRequest& r = *live.at(s.id);
    if (!r.bound) {
      backend->add_sequence(s.id, *r.profile, s.start);  // bound in its first step: start is its cached prefix
      r.bound = true;
    }
    ForwardSeq f;
    f.id = s.id;
    f.start = s.start;
    f.tokens = std::span<const int32_t>(r.tokens).subspan(static_cast<size_t>(s.start), static_cast<size_t>(s.count));
    // Logits at every position of a chunk holding positions whose prompt logprobs are still due.
    f.all_logits = r.req.prompt_logprobs >= 0 && s.start + s.count > r.prompt_lp_next && r.prompt_lp_next < r.prompt_len - 1;
    f.no_logits = !s.sample && !f.all_logits;
    f.prompt_len = r.prompt_len;
    batch.push_back(f);
    if (r.cached_tokens < 0) {  // its first step: where the prefix cache let it start
      r.cached_tokens = s.start;
      if (r.prefix_lookup) {
        metrics.prefix_cache_queries += r.prompt_len;
        metrics.prefix_cache_hits += s.start;
      }
    } else if (s.resumed && r.prefix_lookup) {  // back after a preemption
      metrics.prefix_cache_preempted_queries += static_cast<int64_t>(r.tokens.size());
      metrics.prefix_cache_preempted_hits += s.start;
    }
    // Cached prompt tokens count as prompt tokens (vLLM's prompt_tokens_total); a recompute does not.
    if (const int64_t end = std::min<int64_t>(s.start + s.count, r.prompt_len); end > r.prompt_counted) {
      metrics.prompt_tokens += end - r.prompt_counted;
      r.prompt_counted = end;
    }
  }
  // Rows whose token the backend may draw itself (the GPU's): the request reads nothing of the row
  // on the host. draw_index[si]: the sequence's entry in draws, or -1.
  std::vector<DeviceDraw> draws;
  std::vector<int32_t> draw_index(plan.seqs.size(), -1);
  if (backend->draws_on_device()) {
    int64_t rows = 0;
    for (size_t si = 0; si < plan.seqs.size(); ++si) {
      const ScheduledSeq& s = plan.seqs[si];
      const ForwardSeq& f = batch[si];
      const int64_t first_row = rows;
      rows += f.no_logits ? 0 : f.all_logits ? s.count : 1;
      if (!s.sample) continue;
      const LiveRequest& r = *live.at(s.id);
      if (!drawn_on_device(r)) continue;
      draw_index[si] = static_cast<int32_t>(draws.size());
      DeviceDraw d;
      d.row = first_row + (f.all_logits ? s.count - 1 : 0);  // a chunk's last row samples
      d.keep_row = r.req.logprobs >= 0;
      d.temperature = r.req.sampling.sampling_temperature();
      d.top_k = r.req.sampling.top_k;
      d.top_p = r.req.sampling.top_p;
      d.min_p = r.req.sampling.min_p;
      d.seed = r.draw_seed;
      d.step = static_cast<uint64_t>(static_cast<int64_t>(r.tokens.size()) - r.prompt_len);
      draws.push_back(d);
    }
  }
  const SelectionStats before = backend->selection_stats();
  std::vector<float>& logits = step_logits;
  std::vector<int32_t> drawn;
  for (const ScheduledSeq& s : plan.seqs) kv.reserve_snapshots(s.id, s.start, s.start + s.count);
  run_page_copies();  // cached streaming pages into the rings of the sequences admitted now
  backend->forward(batch, draws, logits, drawn);
  for (const ScheduledSeq& s : plan.seqs) {  // their K/V are stored: into the prefix cache
    const LiveRequest& r = *live.at(s.id);
    kv.commit(s.id, s.start + s.count, std::span<const int32_t>(r.tokens).first(cacheable(r)));
  }
  run_page_copies();  // the ring pages of the blocks just registered into their snapshots
  const SelectionStats after = backend->selection_stats();
  metrics.selected_tokens += after.selected_tokens - before.selected_tokens;
  metrics.selectable_tokens += after.context_tokens - before.context_tokens;
  metrics.page_selections += after.selections - before.selections;
  metrics.device_drawn_tokens += static_cast<int64_t>(draws.size());
  const StepGraphStats graphs = backend->graph_stats();
  metrics.graph_replays = graphs.replays;
  metrics.graph_updates = graphs.updates;
  metrics.graph_captures = graphs.instantiations;

  const int64_t V = model.config.vocab_size;
  std::vector<uint64_t> appended;
  std::vector<uint64_t> done;
  int64_t rows = 0;  // logits rows of the sequences before this one (forward's layout)
  const auto now = clock_type::now();
  for (size_t si = 0; si < plan.seqs.size(); ++si) {
    const ScheduledSeq& s = plan.seqs[si];
    const ForwardSeq& f = batch[si];
    const int64_t first_row = rows;
    rows += f.no_logits ? 0 : f.all_logits ? s.count : 1;
    LiveRequest& r = *live.at(s.id);
    if (f.all_logits) collect_prompt_logprobs(r, logits.data() + first_row * V, V, s.start, s.count);
    if (!s.sample) continue;
    std::span<float> lrow(logits.data() + (first_row + (f.all_logits ? s.count - 1 : 0)) * V, static_cast<size_t>(V));
    if (static_cast<int64_t>(r.tokens.size()) - r.prompt_len >= r.max_new) {  // max_tokens = 0
      done.push_back(s.id);
      continue;
    }
    // min_tokens: the token sampled now is number gen + 1; before the minimum no stop id can be drawn
    // and no stop string ends.
    const bool may_stop = static_cast<int64_t>(r.tokens.size()) - r.prompt_len >= r.req.min_tokens;
    // A structured output whose text is whole and admits nothing more (a choice made, a regex or a
    // grammar at its end): the choice ends here, min_tokens and ignore_eos notwithstanding (as vLLM
    // ends a request whose grammar has terminated). Reached before sampling only when the language
    // admits the empty text alone.
    if (r.language && r.language->complete() && !r.language->extendable()) {
      finish(r, FinishReason::kStop, "");
      continue;
    }
    std::optional<TokenLogprob> lp;
    try {
      const std::optional<int32_t> device_token =
          draw_index[si] >= 0 ? std::optional(drawn[static_cast<size_t>(draw_index[si])]) : std::nullopt;
      lp = next_token(r, token_bytes(), may_stop, lrow, device_token);
    } catch (const InvalidArgument& ex) {
      finish(r, FinishReason::kError, "", ex.what(), /*request_error=*/true);
      continue;
    }
    const int64_t gen = static_cast<int64_t>(r.tokens.size()) - r.prompt_len;
    if (gen == 1) {
      r.first_token = now;
      metrics.time_to_first_token_seconds.observe(seconds(now - r.arrival));
    } else {
      metrics.inter_token_latency_seconds.observe(seconds(now - r.last_token));
    }
    r.last_token = now;
    metrics.generation_tokens += 1;

    RequestOutput out;
    take_prompt_logprobs(r, out);
    out.prompt_tokens = r.prompt_len;
    out.cached_tokens = std::max<int64_t>(0, r.cached_tokens);
    out.completion_tokens = gen;
    out.token_ids.push_back(r.tokens.back());
    if (lp) out.logprobs.push_back(std::move(*lp));
    const TokenEnd end = emit_token(r, model.tokenizer, token_bytes(), may_stop, std::move(out));
    if (end.reason == FinishReason::kNone) {
      appended.push_back(s.id);
    } else {
      finish(r, end.reason, end.stop_reason, end.error, /*request_error=*/end.reason == FinishReason::kError);
    }
  }
  for (uint64_t key : done) {
    auto it = live.find(key);
    if (it != live.end()) finish(*it->second, FinishReason::kLength, "");
  }
  // Requests finished above were removed from the scheduler; the rest advance.
  StepPlan advanced;
  for (const ScheduledSeq& s : plan.seqs) {
    if (live.contains(s.id)) advanced.seqs.push_back(s);
  }
  scheduler.on_step_done(advanced, appended);
}

void Engine::Impl::update_counts() {
  try {  // informational: a failure here is logged, never fails a step
    metrics.requests_running = static_cast<int64_t>(scheduler.num_running());
    {
      std::lock_guard lock(mu);
      metrics.requests_waiting = static_cast<int64_t>(scheduler.num_waiting() + incoming.size());
    }
    metrics.kv_pages_used_retrieval = kv.used_pages(kvcache::HeadRole::kRetrieval);
    metrics.kv_pages_used_streaming = kv.used_pages(kvcache::HeadRole::kStreaming);
    pages_in_use = kv.num_pages() - kv.free_pages();
  } catch (const std::exception& ex) {
    spdlog::error("engine: updating the request and page counts failed: {}", ex.what());
  }
}

void Engine::Impl::update_gauges() {
  update_counts();
  try {  // informational: a failure here is logged, never ends the loop
    // Savings against the dense profile: one page per (layer, KV head) per block of history.
    int64_t saved = 0;
    const int64_t P = kv.config().page_tokens;
    for (const auto& [key, r] : live) {
      if (!r->bound) continue;
      const auto p = scheduler.progress(key);
      if (!p) continue;
      const int64_t dense = model.config.n_layers * model.config.n_kv_heads * ((p->computed + P - 1) / P);
      const auto& seq = kv.sequence(key);
      saved += dense - seq.pages_held();
    }
    metrics.kv_bytes_saved = saved * metrics.kv_bytes_per_page;
  } catch (const std::exception& ex) {
    spdlog::error("engine: updating the KV savings gauge failed: {}", ex.what());
  }
}

}  // namespace sparseserve
