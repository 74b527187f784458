// The serving engine on the real default model (skipped when absent): streams, stop handling,
// abort and cancel returning pages, seeded determinism alone vs in a busy batch, and preemption by
// recompute resuming to the same tokens.
#include "engine/engine.h"

#include <gtest/gtest.h>

#include "tests/engine/engine_fixture.h"

#include <algorithm>
#include <filesystem>
#include <thread>

namespace sparseserve {
namespace {

using namespace std::chrono_literals;

TEST_F(EngineTest, SeededAndGreedyTokensAreTheSameAloneOrInABusyBatch) {
  EngineConfig cfg;
  cfg.max_num_batched_tokens = 96;  // forces chunked prefill next to decodes
  Engine e(*model_, profiles(), cfg);
  const std::string prompt = "Write a short story about a lighthouse keeper who finds a message in a bottle.";
  const Result greedy_alone = drain(*e.submit(request("g0", prompt, 24, std::nullopt, 0.0f)));
  const Result seeded_alone = drain(*e.submit(request("s0", prompt, 24, 1234, 0.9f)));
  std::vector<std::shared_ptr<RequestStream>> busy;
  for (int i = 0; i < 6; ++i) {
    std::string id = "busy", text = "List some facts about the number ";
    id += std::to_string(i);
    text += std::to_string(i * 37);
    text += ". ";
    text += prompt;
    busy.push_back(e.submit(request(id, text, 30, 77 + static_cast<uint64_t>(i), 1.0f)));
  }
  auto g = e.submit(request("g1", prompt, 24, std::nullopt, 0.0f));
  auto s = e.submit(request("s1", prompt, 24, 1234, 0.9f));
  const Result greedy_busy = drain(*g), seeded_busy = drain(*s);
  for (auto& b : busy) drain(*b);
  EXPECT_EQ(greedy_alone.tokens, greedy_busy.tokens);
  EXPECT_EQ(seeded_alone.tokens, seeded_busy.tokens);
  EXPECT_EQ(greedy_alone.tokens.size(), 24u);
  EXPECT_EQ(greedy_alone.last.finish_reason, FinishReason::kLength);
  expect_all_pages_returned(e);
}

TEST_F(EngineTest, PreemptedRequestsResumeToTheSameTokens) {
  const std::string prompt = "Explain how a bicycle gear system works, step by step, for a child.";
  Result reference;
  {
    Engine e(*model_, profiles(), EngineConfig{});
    reference = drain(*e.submit(request("ref", prompt, 60, std::nullopt, 0.0f)));
  }
  // A KV budget so small that four concurrent requests cannot all fit once they cross into their
  // second block (balanced: 45 retrieval + 45 streaming lanes, 90 pages per block): preemption.
  EngineConfig tight;
  tight.kv_cache_bytes = 420 * 34816;  // pages of 64 tokens × 64 dims fp32 + metadata
  Engine e(*model_, profiles(), tight);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 4; ++i) {
    std::string id = "p";
    id += std::to_string(i);
    streams.push_back(e.submit(request(id, prompt, 60, std::nullopt, 0.0f)));
  }
  for (auto& st : streams) EXPECT_EQ(drain(*st).tokens, reference.tokens);
  EXPECT_GT(e.metrics().num_preemptions.load(), 0);
  // Each prompt token is counted once, however often a preempted request recomputes it.
  EXPECT_EQ(e.metrics().prompt_tokens.load(), 4 * static_cast<int64_t>(model_->tokenizer.encode(prompt, false, false).size()));
  expect_all_pages_returned(e);
}

// A preempted request recomputes its generated positions as they were first computed (one decode
// step each, selecting pages), so it resumes to the very logprobs of an uninterrupted run.
TEST_F(EngineRecomputeTest, APreemptedRequestUnderPageSelectionResumesExactly) {
  for (const std::string profile : {"select-128", "dense"}) {
    std::vector<float> reference;
    {
      Engine e(*model_, recompute_profiles(), EngineConfig{});
      reference = logprobs_of(*e.submit(greedy("ref", 130, 110, profile)));
    }
    EngineConfig tight;
    tight.kv_cache_bytes = 630 * 34816;  // two such requests cannot both reach 240 tokens
    // Without the prefix cache: one admitted a step after the other would share its prompt's pages,
    // and the two would fit (engine_prefix_test covers a preempted request with the cache).
    tight.enable_prefix_caching = false;
    Engine e(*model_, recompute_profiles(), tight);
    auto a = e.submit(greedy("a", 130, 110, profile));
    auto b = e.submit(greedy("b", 130, 110, profile));
    EXPECT_EQ(logprobs_of(*a), reference) << profile;
    EXPECT_EQ(logprobs_of(*b), reference) << profile << ": after preemption";
    EXPECT_GT(e.metrics().num_preemptions.load(), 0) << profile;
    expect_all_pages_returned(e);
  }
}

// Dynamic prefill estimates a mask per query block: prompt chunks end on block boundaries, so the
// output does not depend on the token budget that cut the prompt (nor on what shared the step).
TEST_F(EngineRecomputeTest, DynamicPrefillIsIndependentOfChunking) {
  std::vector<float> whole, chunked;
  for (const int32_t budget : {4096, 100}) {
    EngineConfig cfg;
    cfg.max_num_batched_tokens = budget;
    ModelProfiles profiles = recompute_profiles();
    profiles.profiles.erase("dynamic-balanced");  // its blocks of 128 would not fit a budget of 100
    Engine e(*model_, std::move(profiles), cfg);
    (budget == 4096 ? whole : chunked) = logprobs_of(*e.submit(greedy("x", 400, 8, "dynamic")));
  }
  ASSERT_EQ(whole.size(), 8u);
  EXPECT_EQ(chunked, whole);
}

TEST_F(EngineTest, StopStringIsCutAndAbortAndCancelReturnPages) {
  Engine e(*model_, profiles(), EngineConfig{});
  // Greedy text first, then ask to stop at a piece of it.
  const std::string prompt = "The days of the week are Monday, Tuesday,";
  const Result full = drain(*e.submit(request("full", prompt, 16, std::nullopt, 0.0f)));
  ASSERT_GE(full.text.size(), 8u);
  const std::string stop = full.text.substr(4, 3);
  Request r = request("stop", prompt, 16, std::nullopt, 0.0f);
  r.stop = {stop};
  const Result cut = drain(*e.submit(r));
  EXPECT_EQ(cut.last.finish_reason, FinishReason::kStop);
  EXPECT_EQ(cut.last.stop_reason, stop);
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(stop)));

  auto a = e.submit(request("long1", prompt, 2000, std::nullopt, 0.0f));
  auto b = e.submit(request("long2", prompt, 2000, std::nullopt, 0.0f));
  ASSERT_TRUE(a->next(10s).has_value());
  EXPECT_TRUE(e.abort_request("long1"));
  b->cancel();
  EXPECT_EQ(drain(*a).last.finish_reason, FinishReason::kAbort);
  EXPECT_EQ(drain(*b).last.finish_reason, FinishReason::kAbort);
  expect_all_pages_returned(e);
  EXPECT_FALSE(e.abort_request("long1"));
}

// A cancelled (or aborted) request's id and its place in the queue are free at once, not when the
// loop, inside a long step, gets to drop it (a retry with the same id was refused, the queue stayed
// full for the whole step).
TEST_F(EngineTest, ACancelledRequestsIdAndQueuePlaceAreFreeAtOnce) {
  EngineConfig cfg;
  cfg.max_num_seqs = 1;
  cfg.max_waiting = 1;
  Engine e(*model_, profiles(), cfg);
  std::string text;
  while (model_->tokenizer.encode(text, false, false).size() < 2000) text += "The committee met to review the budget. ";
  auto busy = e.submit(request("busy", text, 2, std::nullopt, 0.0f));  // its prefill: a long step
  for (int i = 0; i < 100 && e.metrics().requests_running.load() == 0; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(e.metrics().requests_running.load(), 1) << "the long request is running";
  const std::string prompt = "The days of the week are";
  auto x = e.submit(request("x", prompt, 2, std::nullopt, 0.0f));  // the one waiting place
  x->cancel();
  auto again = e.submit(request("x", prompt, 2, std::nullopt, 0.0f));  // the same id, at once
  EXPECT_TRUE(e.abort_request("x"));
  auto y = e.submit(request("y", prompt, 2, std::nullopt, 0.0f));  // the place, at once
  EXPECT_EQ(drain(*x).last.finish_reason, FinishReason::kAbort);
  EXPECT_EQ(drain(*again).last.finish_reason, FinishReason::kAbort);
  EXPECT_EQ(drain(*y).last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(drain(*busy).last.finish_reason, FinishReason::kLength);
  expect_all_pages_returned(e);
}

// While a request's first step runs (a long prefill), the gauges already count it as running, not
// waiting, and count its pages (they said running 1, waiting 1, pages 0 until the step ended).
TEST_F(EngineTest, GaugesCountARequestAndItsPagesDuringItsFirstStep) {
  Engine e(*model_, profiles(), EngineConfig{});
  std::string text;
  while (model_->tokenizer.encode(text, false, false).size() < 1500) text += "The committee met to review the budget. ";
  auto busy = e.submit(request("busy", text, 2, std::nullopt, 0.0f));  // one step: its whole prefill
  bool seen = false;
  for (int i = 0; i < 400 && !seen; ++i) {
    seen = e.kv_pages_in_use() > 0 && e.metrics().requests_waiting.load() == 0 &&
           e.metrics().requests_running.load() == 1;
    if (!seen) std::this_thread::sleep_for(5ms);
  }
  ASSERT_TRUE(seen) << "pages " << e.kv_pages_in_use() << ", waiting " << e.metrics().requests_waiting.load()
                    << ", running " << e.metrics().requests_running.load();
  EXPECT_FALSE(busy->next(0ms).has_value()) << "seen only after the prefill step";
  EXPECT_EQ(drain(*busy).last.finish_reason, FinishReason::kLength);
  expect_all_pages_returned(e);
}

TEST_F(EngineTest, ARequestOutgrowingTheWholeKvCacheEndsByLengthAndTheEngineKeepsServing) {
  // 200 pages hold two 64-token blocks of the dense profile's lanes (one per layer and KV head):
  // a short prompt fits, its generation outgrows the whole cache. The request preempts itself, the
  // scheduler drops it as unservable, and it must end by length with every token it generated (it
  // used to end the engine thread: std::terminate).
  const std::string prompt = "Tell me a long story about dragons.";
  const int64_t lanes = model_->config.n_layers * model_->config.n_kv_heads, page_tokens = 64;
  EngineConfig tight;
  tight.kv_cache_bytes = 200 * 34816;  // pages of 64 tokens × 64 dims fp32 + metadata
  Engine e(*model_, profiles(), tight);
  Request r = request("x", prompt, 400, std::nullopt, 0.0f);
  r.sparsity = "dense";
  const auto prompt_len = static_cast<int64_t>(r.prompt.size());
  const Result out = drain(*e.submit(r));
  EXPECT_EQ(out.last.finish_reason, FinishReason::kLength) << out.last.error;
  // Every token whose sequence the cache holds, plus the one sampled from the last of them.
  const int64_t capacity = 200 / lanes * page_tokens;
  ASSERT_EQ(static_cast<int64_t>(out.tokens.size()), capacity + 1 - prompt_len);
  EXPECT_EQ(out.last.completion_tokens, capacity + 1 - prompt_len);
  {
    Engine roomy(*model_, profiles(), EngineConfig{});
    Request ref = r;
    ref.max_tokens = capacity + 1 - prompt_len;
    const Result reference = drain(*roomy.submit(ref));
    EXPECT_EQ(out.tokens, reference.tokens);
    EXPECT_EQ(out.text, reference.text);
  }
  const Result after = drain(*e.submit(request("after", "Hello", 3, std::nullopt, 0.0f)));
  EXPECT_EQ(after.last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(after.tokens.size(), 3u);
  // The longest sequence the cache holds: a prompt one shorter is taken, one of that length is
  // refused with the limit named.
  EXPECT_EQ(e.max_sequence_tokens("dense"), capacity);
  Request at_limit = r;
  at_limit.prompt.assign(static_cast<size_t>(capacity - 1), r.prompt.back());
  at_limit.max_tokens = 1;
  EXPECT_EQ(drain(*e.submit(at_limit)).last.finish_reason, FinishReason::kLength);
  at_limit.prompt.push_back(r.prompt.back());
  try {
    e.submit(at_limit);
    ADD_FAILURE() << "a prompt the whole cache cannot hold was accepted";
  } catch (const InvalidArgument& err) {
    EXPECT_NE(std::string(err.what()).find("holds sequences of at most 128 tokens under sparsity profile 'dense'"),
              std::string::npos)
        << err.what();
  }
  expect_all_pages_returned(e);
}

TEST_F(EngineTest, AStopTokenReleasesTheTextHeldForAStopString) {
  Engine e(*model_, profiles(), EngineConfig{});
  const std::string prompt = "The days of the week are Monday, Tuesday,";
  const Result full = drain(*e.submit(request("full", prompt, 20, std::nullopt, 0.0f)));
  // The first token from the fourth on that did not occur before: a stop token id there ends the
  // greedy text right before it.
  size_t k = 0;
  for (size_t i = 3; i < full.tokens.size() && k == 0; ++i) {
    if (std::find(full.tokens.begin(), full.tokens.begin() + static_cast<std::ptrdiff_t>(i), full.tokens[i]) ==
        full.tokens.begin() + static_cast<std::ptrdiff_t>(i)) {
      k = i;
    }
  }
  ASSERT_GT(k, 0u) << "no new token in the greedy text";
  const std::string before = model_->tokenizer.decode(std::span<const int32_t>(full.tokens.data(), k), true);
  ASSERT_FALSE(before.empty());
  Request r = request("cut", prompt, 20, std::nullopt, 0.0f);
  r.stop_token_ids = {full.tokens[k]};
  // Starts with the text's last byte, never matches: the filter holds that byte back to the end.
  r.stop = {before.substr(before.size() - 1) + "\x01never"};
  const Result cut = drain(*e.submit(r));
  EXPECT_EQ(cut.last.finish_reason, FinishReason::kStop);
  EXPECT_EQ(cut.text, before);
  EXPECT_EQ(cut.last.stop_reason, model_->tokenizer.decode(std::span<const int32_t>(&full.tokens[k], 1)));
  EXPECT_EQ(cut.last.stop_token, full.tokens[k]);
}

TEST_F(EngineTest, MinTokensHoldsOffEveryStop) {
  // Greedy chat answers end with the end of turn after a few tokens; with min_tokens the same
  // request runs on: no EOS, end of turn, stop_token_ids entry or stop string before the minimum,
  // and its first tokens are the unconstrained run's (only stop ids are suppressed, and greedy
  // never picked one before the end). The logprobs stay the model's own.
  Engine e(*model_, profiles(), EngineConfig{});
  Request base = request("free", "", 64, std::nullopt, 0.0f);
  base.prompt = model_->tokenizer.encode("<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n", false, true);
  base.ignore_eos = false;
  base.end_of_turn = model_->tokenizer.token_id("<|im_end|>");
  ASSERT_GE(base.end_of_turn, 0);
  base.logprobs = 0;
  const Result free_run = drain(*e.submit(base));
  ASSERT_EQ(free_run.last.finish_reason, FinishReason::kStop);
  const int64_t natural = free_run.last.completion_tokens;  // the end of turn included
  ASSERT_LT(natural, 40) << "the greedy answer should end early";

  Request held = base;
  held.id = "held";
  held.min_tokens = natural + 8;
  held.stop_token_ids = {free_run.tokens.back()};
  held.stop = {free_run.text.empty() ? std::string("\x01") : free_run.text.substr(0, 1)};
  const Result out = drain(*e.submit(held));
  EXPECT_GE(out.last.completion_tokens, held.min_tokens);
  for (int64_t i = 0; i < held.min_tokens; ++i) {
    const int32_t t = out.tokens[static_cast<size_t>(i)];
    EXPECT_NE(t, base.end_of_turn) << "token " << i;
    for (int32_t eos : model_->config.eos_ids) EXPECT_NE(t, eos) << "token " << i;
  }
  ASSERT_GE(out.tokens.size(), static_cast<size_t>(natural - 1));
  EXPECT_TRUE(std::equal(free_run.tokens.begin(), free_run.tokens.end() - 1, out.tokens.begin()));
  // The stop string (the answer's first character) was in the text from the start: matched only in
  // text from after the minimum, if at all.
  if (out.last.finish_reason == FinishReason::kStop && !out.last.stop_reason.empty()) {
    EXPECT_GE(out.last.completion_tokens, held.min_tokens + 1);
  }
  if (out.last.finish_reason == FinishReason::kLength) {
    EXPECT_EQ(out.last.completion_tokens, held.max_tokens);
  }

  Request bad = base;
  bad.id = "bad";
  bad.min_tokens = bad.max_tokens + 1;
  EXPECT_THROW(e.submit(bad), InvalidArgument);
  bad.min_tokens = -1;
  EXPECT_THROW(e.submit(bad), InvalidArgument);
  expect_all_pages_returned(e);
}

TEST_F(EngineTest, BadRequestsAreRejectedAtSubmit) {
  Engine e(*model_, profiles(), EngineConfig{});
  Request empty = request("e", "x", 4, std::nullopt, 0.0f);
  empty.prompt.clear();
  EXPECT_THROW(e.submit(empty), InvalidArgument);
  Request bad_tok = request("t", "x", 4, std::nullopt, 0.0f);
  bad_tok.prompt.push_back(static_cast<int32_t>(model_->config.vocab_size));
  EXPECT_THROW(e.submit(bad_tok), InvalidArgument);
  Request prof = request("p", "x", 4, std::nullopt, 0.0f);
  prof.sparsity = "no-such-profile";
  EXPECT_THROW(e.submit(prof), InvalidArgument);
  Request temp = request("n", "x", 4, std::nullopt, -1.0f);
  EXPECT_THROW(e.submit(temp), InvalidArgument);
  Request too_long = request("l", "x", 4, std::nullopt, 0.0f);
  too_long.prompt.assign(static_cast<size_t>(model_->config.max_context), 1);
  EXPECT_THROW(e.submit(too_long), InvalidArgument);
  auto ok = e.submit(request("dup", "hello", 2, std::nullopt, 0.0f));
  EXPECT_THROW(e.submit(request("dup", "hello", 2, std::nullopt, 0.0f)), InvalidArgument);
  drain(*ok);
}

// A dynamic prefill block over the step budget: the scheduler could not cut prompts on its blocks,
// so a prompt's masks would depend on how it was chunked. Refused at start, naming the profile.
TEST_F(EngineTest, ADynamicPrefillBlockOverTheStepBudgetIsRefusedAtStart) {
  EngineConfig small;
  small.max_num_batched_tokens = 32;  // the default model's xattn profiles: blocks of 64
  try {
    Engine e(*model_, profiles(), small);
    FAIL() << "started";
  } catch (const InvalidArgument& ex) {
    EXPECT_NE(std::string(ex.what()).find("prefill block_tokens 64 is over max_num_batched_tokens 32"), std::string::npos)
        << ex.what();
  }
}

TEST_F(EngineTest, KvBudgetPastTheMachinesMemoryIsRefusedAtStart) {
  EngineConfig huge;
  huge.kv_cache_bytes = size_t{1} << 50;  // 1 PiB: no machine this runs on has it
  try {
    Engine e(*model_, profiles(), huge);
    FAIL() << "an engine with a 1 PiB KV cache started";
  } catch (const InvalidArgument& ex) {
    EXPECT_NE(std::string(ex.what()).find("more than this machine's memory"), std::string::npos) << ex.what();
  }
}

}  // namespace
}  // namespace sparseserve
