// Fixtures for the engine's tests on the real default model (skipped when absent): requests,
// draining a stream, pages all returned; greedy requests with logprobs under test profiles.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "tests/engine/default_model_fixture.h"

namespace sparseserve {

using namespace std::chrono_literals;

class EngineTest : public DefaultModelTest {
 protected:
  static Request request(const std::string& id, const std::string& text, int64_t max_tokens, std::optional<uint64_t> seed,
                         float temperature) {
    Request r;
    r.id = id;
    r.prompt = model_->tokenizer.encode(text, false, false);
    r.max_tokens = max_tokens;
    r.sampling.temperature = temperature;
    r.sampling.seed = seed;
    r.ignore_eos = true;
    return r;
  }
  struct Result {
    std::vector<int32_t> tokens;
    std::string text;
    RequestOutput last;
  };
  // The loop frees a request's pages right before its last delta; they are all back soon after.
  static void expect_all_pages_returned(const Engine& e) {
    for (int i = 0; i < 200 && e.kv_pages_in_use() != 0; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(e.kv_pages_in_use(), 0);
  }
  static Result drain(RequestStream& s) {
    Result r;
    for (int i = 0; i < 100000; ++i) {
      auto out = s.next(200ms);
      if (!out) continue;
      r.tokens.insert(r.tokens.end(), out->token_ids.begin(), out->token_ids.end());
      r.text += out->text;
      if (out->finished) {
        r.last = *out;
        return r;
      }
    }
    ADD_FAILURE() << "stream never finished";
    return r;
  }
};

// The same greedy request, its tokens and logprobs, under profiles whose attention depends on how
// positions were computed: page selection at every decode step (token budget 128, far below the
// context) and dynamic prefill (block masks per 64-token query block).
class EngineRecomputeTest : public EngineTest {
 protected:
  static ModelProfiles recompute_profiles() {
    return ModelProfiles::load(SPARSESERVE_SOURCE_DIR "/tests/engine/data/recompute-profiles.yaml",
                               static_cast<int32_t>(model_->config.n_layers),
                               static_cast<int32_t>(model_->config.n_kv_heads));
  }
  static Request greedy(const std::string& id, int64_t prompt_tokens, int64_t max_tokens, const std::string& profile) {
    std::string text;
    for (int i = 0; text.size() < 8000; ++i) {
      text += "Item " + std::to_string(i * 7919 % 1000) + " is stored in box " + std::to_string(i % 37) + ". ";
    }
    Request r = request(id, text, max_tokens, std::nullopt, 0.0f);
    r.prompt.resize(static_cast<size_t>(prompt_tokens));
    r.sparsity = profile;
    r.logprobs = 0;
    return r;
  }
  static std::vector<float> logprobs_of(RequestStream& s) {
    std::vector<float> lps;
    for (int i = 0; i < 100000; ++i) {
      auto out = s.next(200ms);
      if (!out) continue;
      for (const auto& lp : out->logprobs) lps.push_back(lp.logprob);
      if (out->finished) return lps;
    }
    ADD_FAILURE() << "stream never finished";
    return lps;
  }
};

}  // namespace sparseserve
