// The engine with prefix caching on the real default model (skipped when absent): a request whose
// prompt begins with blocks an earlier request computed starts from them and gives the tokens and
// logprobs it gives without the cache, under profiles with and without streaming heads (whose window
// the cache copies into the new ring), page selection and dynamic prefill (from whole query blocks);
// prompt logprobs start from nothing; cached pages are taken back under memory pressure.
#include <gtest/gtest.h>

#include "tests/engine/engine_fixture.h"

namespace sparseserve {
namespace {

class EnginePrefixTest : public EngineRecomputeTest {
 protected:
  struct Run {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    RequestOutput last;
  };
  static Run run(Engine& e, Request r) {
    auto stream = e.submit(std::move(r));
    Run out;
    for (int i = 0; i < 100000; ++i) {
      auto d = stream->next(200ms);
      if (!d) continue;
      out.tokens.insert(out.tokens.end(), d->token_ids.begin(), d->token_ids.end());
      for (const auto& lp : d->logprobs) out.logprobs.push_back(lp.logprob);
      if (d->finished) {
        out.last = *d;
        return out;
      }
    }
    ADD_FAILURE() << "stream never finished";
    return out;
  }
};

TEST_F(EnginePrefixTest, ACachedPromptGivesTheTokensAndLogprobsOfAColdOne) {
  for (const std::string profile : {"dense", "select-all", "balanced"}) {
    Run cold;
    {
      EngineConfig off;
      off.enable_prefix_caching = false;
      Engine e(*model_, recompute_profiles(), off);
      cold = run(e, greedy("cold", 300, 40, profile));
      EXPECT_EQ(e.metrics().prefix_cache_queries.load(), 0);
    }
    Engine e(*model_, recompute_profiles(), EngineConfig{});
    const Run first = run(e, greedy("first", 300, 40, profile));
    EXPECT_EQ(first.last.cached_tokens, 0) << profile;
    const Run again = run(e, greedy("again", 300, 40, profile));
    EXPECT_EQ(again.last.cached_tokens, 256) << profile;  // 4 whole blocks of 64 before the last token
    // A longer prompt with the same start: its first 300 tokens' whole blocks.
    const Run longer = run(e, greedy("longer", 400, 4, profile));
    EXPECT_EQ(longer.last.cached_tokens, 256) << profile;
    ASSERT_EQ(cold.logprobs.size(), 40u);
    EXPECT_EQ(first.tokens, cold.tokens) << profile;
    EXPECT_EQ(again.tokens, cold.tokens) << profile;
    EXPECT_EQ(again.logprobs, cold.logprobs) << profile;
    EXPECT_EQ(e.metrics().prefix_cache_queries.load(), 1000) << profile;
    EXPECT_EQ(e.metrics().prefix_cache_hits.load(), 512) << profile;
    EXPECT_EQ(e.metrics().prompt_tokens.load(), 1000) << profile;  // cached tokens count as prompt tokens
    expect_all_pages_returned(e);
  }
}

// The next turn of a conversation: its prompt holds the last request's prompt and answer. Without
// decode page selection the answer's blocks are cached too (their K/V are a prefill's); with it only
// the prompt's. A request that ends in the step that computed its prompt leaves its blocks too.
TEST_F(EnginePrefixTest, AnAnswersBlocksServeTheNextTurn) {
  for (const std::string profile : {"dense", "select-all", "balanced"}) {
    Engine e(*model_, recompute_profiles(), EngineConfig{});
    Request first = greedy("first", 150, 100, profile);
    const Run answer = run(e, first);
    ASSERT_EQ(answer.tokens.size(), 100u);
    Request next = greedy("next", 150, 8, profile);
    next.prompt.insert(next.prompt.end(), answer.tokens.begin(), answer.tokens.end());
    next.prompt.insert(next.prompt.end(), first.prompt.begin(), first.prompt.begin() + 20);  // the new message
    const Run got = run(e, next);
    // 249 tokens computed (the last answer token was not): 3 blocks; with selection 2 (the prompt's).
    EXPECT_EQ(got.last.cached_tokens, profile == "select-all" ? 128 : 192) << profile;
    Run cold;
    {
      EngineConfig off;
      off.enable_prefix_caching = false;
      Engine plain(*model_, recompute_profiles(), off);
      Request again = next;
      cold = run(plain, again);
    }
    EXPECT_EQ(got.logprobs, cold.logprobs) << profile;
  }
  Engine e(*model_, recompute_profiles(), EngineConfig{});
  run(e, greedy("one-token", 300, 1, "dense"));
  EXPECT_EQ(run(e, greedy("after", 300, 1, "dense")).last.cached_tokens, 256);
}

// vLLM's cache_salt: only requests with the same salt share blocks.
TEST_F(EnginePrefixTest, OnlyRequestsWithTheSameSaltShareBlocks) {
  Engine e(*model_, recompute_profiles(), EngineConfig{});
  const auto salted = [](const std::string& id, const std::string& salt) {
    Request r = greedy(id, 300, 2, "dense");
    r.cache_salt = salt;
    return r;
  };
  EXPECT_EQ(run(e, salted("plain", "")).last.cached_tokens, 0);
  EXPECT_EQ(run(e, salted("a1", "tenant-a")).last.cached_tokens, 0);
  EXPECT_EQ(run(e, salted("b1", "tenant-b")).last.cached_tokens, 0);
  EXPECT_EQ(run(e, salted("a2", "tenant-a")).last.cached_tokens, 256);
  EXPECT_EQ(run(e, salted("plain2", "")).last.cached_tokens, 256);
  expect_all_pages_returned(e);
}

TEST_F(EnginePrefixTest, PromptLogprobsStartFromNothing) {
  Engine e(*model_, recompute_profiles(), EngineConfig{});
  // Prompt logprobs need every prompt position: such a request finds nothing, but what it computed
  // is found by the next one.
  Request with_prompt_logprobs = greedy("p", 300, 2, "dense");
  with_prompt_logprobs.prompt_logprobs = 1;
  EXPECT_EQ(run(e, with_prompt_logprobs).last.cached_tokens, 0);
  EXPECT_EQ(run(e, greedy("q", 300, 2, "dense")).last.cached_tokens, 256);
  Request again = greedy("r", 300, 2, "dense");
  again.prompt_logprobs = 1;
  const Run r = run(e, again);
  EXPECT_EQ(r.last.cached_tokens, 0);
  EXPECT_EQ(e.metrics().prefix_cache_queries.load(), 300);
  expect_all_pages_returned(e);
}

// Under a dynamic prefill a query block's mask depends on the blocks up to it alone, so a prompt's
// whole query blocks are shared with later dynamic prompts: from a multiple of the block (64 tokens
// in `dynamic`, 128 in `dynamic-balanced`, whose streaming heads the cache copies as well), never
// the last partial block or the answer. A prompt under min_prompt_tokens runs dense and shares only
// with such prompts. The logprobs are those of a server without the cache.
TEST_F(EnginePrefixTest, DynamicPrefillSharesWholeQueryBlocksWithDynamicPrompts) {
  for (const std::string profile : {"dynamic", "dynamic-balanced"}) {
    const int64_t block = profile == "dynamic" ? 64 : 128;
    Engine e(*model_, recompute_profiles(), EngineConfig{});
    const Request first = greedy("first", 500, 40, profile);
    const Run answer = run(e, first);
    EXPECT_EQ(answer.last.cached_tokens, 0) << profile;
    auto branch = [&](const std::string& id, int64_t length, size_t at) {
      Request r = greedy(id, length, 4, profile);
      for (size_t i = at; i < r.prompt.size(); ++i) r.prompt[i] = first.prompt[i - at];  // another text from `at` on
      return r;
    };
    const Request again = greedy("again", 500, 4, profile), at330 = branch("at330", 500, 330);
    // The next turn (the first prompt, its answer, more): the first prompt's whole query blocks, not
    // the page its last partial block shares with the answer (decoded, not masked).
    Request next = first;
    next.id = "next";
    next.max_tokens = 4;
    ASSERT_EQ(answer.tokens.size(), 40u);
    next.prompt.insert(next.prompt.end(), answer.tokens.begin(), answer.tokens.end());
    next.prompt.insert(next.prompt.end(), first.prompt.begin(), first.prompt.begin() + 60);
    const Run a = run(e, again), b = run(e, at330), c = run(e, next);
    EXPECT_EQ(a.last.cached_tokens, 500 / block * block) << profile;  // 448 or 384
    EXPECT_EQ(b.last.cached_tokens, 330 / block * block) << profile;
    EXPECT_EQ(c.last.cached_tokens, 500 / block * block) << profile;
    // Under `dynamic-balanced` a 200-token prompt runs dense: it finds none of the dynamic blocks,
    // and its own whole pages serve the next dense one.
    if (profile == "dynamic-balanced") {
      const Request short_one = greedy("short", 200, 4, profile);
      EXPECT_EQ(run(e, short_one).last.cached_tokens, 0);
      const Run d = run(e, greedy("short-again", 200, 4, profile));
      EXPECT_EQ(d.last.cached_tokens, 192);
      EngineConfig off;
      off.enable_prefix_caching = false;
      Engine plain(*model_, recompute_profiles(), off);
      EXPECT_EQ(run(plain, short_one).logprobs, d.logprobs);
    }
    EngineConfig off;
    off.enable_prefix_caching = false;
    Engine plain(*model_, recompute_profiles(), off);
    EXPECT_EQ(run(plain, again).logprobs, a.logprobs) << profile;
    EXPECT_EQ(run(plain, at330).logprobs, b.logprobs) << profile;
    EXPECT_EQ(run(plain, next).logprobs, c.logprobs) << profile;
    expect_all_pages_returned(e);
  }
}

// Under streaming heads a later prompt that branches off inside an earlier prompt's chunk starts at
// the last whole block they share: a chunk of 512 tokens leaves only its last 5 pages' positions in
// the ring, and writes the blocks before them into snapshots the cache reserved (a block straddling
// that point gets the rest from the ring). Branching off at 900 tokens starts from 896, at 150 from
// 128; the logprobs are those of a server without the cache.
TEST_F(EnginePrefixTest, StreamingHeadsStartFromTheWholeSharedBlocksOfAChunkedPrompt) {
  EngineConfig chunked;
  chunked.max_num_batched_tokens = 512;
  Engine e(*model_, recompute_profiles(), chunked);
  Request first = greedy("first", 1200, 4, "balanced");
  EXPECT_EQ(run(e, first).last.cached_tokens, 0);
  auto branch = [&](const std::string& id, size_t at) {
    Request r = greedy(id, 1200, 4, "balanced");
    for (size_t i = at; i < r.prompt.size(); ++i) r.prompt[i] = first.prompt[i - at];  // another text from `at` on
    return r;
  };
  const Request at900 = branch("at900", 900), at150 = branch("at150", 150);
  const Run b = run(e, at900), c = run(e, at150);
  EXPECT_EQ(b.last.cached_tokens, 896);
  EXPECT_EQ(c.last.cached_tokens, 128);
  EXPECT_EQ(run(e, greedy("same", 1200, 4, "balanced")).last.cached_tokens, 1152);
  EngineConfig off = chunked;
  off.enable_prefix_caching = false;
  Engine plain(*model_, recompute_profiles(), off);
  EXPECT_EQ(run(plain, at900).logprobs, b.logprobs);
  EXPECT_EQ(run(plain, at150).logprobs, c.logprobs);
  expect_all_pages_returned(e);
}

// Preempted, a request comes back to its whole prompt from the cache (a prompt of whole blocks), and
// without page selection or dynamic prefill to its answer's whole blocks too; it recomputes the rest
// of its generated positions as they were first computed: under page selection and dynamic prefill
// one decode step each. Its logprobs are those of an uninterrupted run.
TEST_F(EnginePrefixTest, APreemptedRequestResumesFromItsCachedPromptExactly) {
  for (const std::string profile : {"select-all", "dense", "dynamic"}) {
    Run reference;
    {
      Engine e(*model_, recompute_profiles(), EngineConfig{});
      reference = run(e, greedy("ref", 256, 110, profile));
    }
    // 700 pages of 90 lanes: one request alone reaches 6 blocks (540), two do not fit side by side.
    EngineConfig tight;
    tight.kv_cache_bytes = 700 * 34816;
    Engine e(*model_, recompute_profiles(), tight);
    auto a = e.submit(greedy("a", 256, 110, profile));
    auto b = e.submit(greedy("b", 256, 110, profile));
    EXPECT_EQ(logprobs_of(*a), reference.logprobs) << profile;
    EXPECT_EQ(logprobs_of(*b), reference.logprobs) << profile << ": after preemption";
    EXPECT_GT(e.metrics().num_preemptions.load(), 0) << profile;
    EXPECT_GT(e.metrics().prefix_cache_hits.load(), 0) << profile;
    // It comes back to its prompt's blocks, and without page selection or dynamic prefill to its
    // answer's so far too (their K/V are a prefill's).
    const int64_t resumed_hits = e.metrics().prefix_cache_preempted_hits.load();
    const int64_t prompt_only = 256 * e.metrics().num_preemptions.load();
    EXPECT_GT(resumed_hits, 0) << profile;
    if (profile == "dense") {
      EXPECT_GT(resumed_hits, prompt_only) << profile;
    } else {
      EXPECT_LE(resumed_hits, prompt_only) << profile;
    }
    expect_all_pages_returned(e);
  }
}

TEST_F(EnginePrefixTest, CachedPagesAreTakenBackWhenTheCacheIsFull) {
  Run cold;
  {
    EngineConfig off;
    off.enable_prefix_caching = false;
    Engine e(*model_, recompute_profiles(), off);
    cold = run(e, greedy("cold", 300, 8, "dense"));
  }
  // 600 pages: a dense request of 308 tokens holds 5 blocks × 90 lanes (30 layers × 3 KV heads) =
  // 450, so each new prompt takes back pages the earlier ones left cached, the oldest first.
  EngineConfig tight;
  tight.kv_cache_bytes = 600 * 34816;
  Engine e(*model_, recompute_profiles(), tight);
  EXPECT_EQ(run(e, greedy("first", 300, 8, "dense")).tokens, cold.tokens);
  for (int i = 0; i < 3; ++i) {
    Request other = greedy(std::string("other").append(1, static_cast<char>('0' + i)), 300, 8, "dense");
    other.prompt[0] = 100 + i;  // another chain from its first block on
    run(e, other);
  }
  const Run again = run(e, greedy("again", 300, 8, "dense"));
  EXPECT_EQ(again.last.cached_tokens, 0);  // evicted by the others
  EXPECT_EQ(again.tokens, cold.tokens);
  EXPECT_EQ(again.logprobs, cold.logprobs);
  const Run third = run(e, greedy("third", 300, 8, "dense"));
  EXPECT_EQ(third.last.cached_tokens, 256);
  EXPECT_EQ(third.logprobs, cold.logprobs);
  expect_all_pages_returned(e);
}

}  // namespace
}  // namespace sparseserve
