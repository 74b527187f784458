// The engine over the GPU backend (engine/cuda/cuda_step_runner.h) on a random model, against the
// CPU forward pass (fp32, dense attention) as the reference. Greedy requests run concurrently
// through continuous batching, chunked prefill, waiting and (in the second test) preemption and
// cancellation; afterwards each request's prompt and generated tokens are replayed through the CPU
// forward pass alone, and every logprob the engine reported (each prompt token's, each generated
// token's) must match the CPU's for that token, each generated token must be the CPU's argmax or
// within rounding of it, and every KV page must be back in the pool.
//
// Tests named *Checks run without a GPU (CI): the backend's refusals are host code.
#include "engine/cuda/cuda_step_runner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/cpu_forward.h"
#include "engine/dense_kv.h"
#include "engine/engine.h"
#include "engine/model_profiles.h"
#include "ops_test_util.h"
#include "random_model.h"

namespace sparseserve::gpu_test {
namespace {

constexpr ModelShape kShape{3, 256, 8, 2, 64, 512, 256, RopeLayout::kInterleaved, false};  // GQA 4, vocab = tokenizer

ModelProfiles small_page_profiles(const ModelConfig& c) {
  ModelProfiles p = ModelProfiles::defaults_for(static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads));
  p.kv_cache.page_tokens = 16;  // many pages per sequence: page boundaries inside every chunk
  p.kv_cache.logical_page_tokens = 16;
  return p;
}

// A profile the CUDA backend does not run: decode page selection on the dense roles.
kvcache::SparsityProfile selecting_profile(const ModelConfig& c) {
  kvcache::SparsityProfile p = kvcache::SparsityProfile::dense(static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads));
  p.name = "select";
  p.decode.enabled = true;
  p.decode.token_budget = 64;
  return p;
}

struct Finished {
  std::vector<int32_t> prompt, generated;
  std::vector<TokenLogprob> logprobs, prompt_logprobs;
  FinishReason reason = FinishReason::kNone;
};

// Reads a stream to its end (at most a minute).
Finished drain(RequestStream& s, std::vector<int32_t> prompt) {
  Finished f;
  f.prompt = std::move(prompt);
  for (int i = 0; i < 600; ++i) {
    const std::optional<RequestOutput> out = s.next(std::chrono::milliseconds(100));
    if (!out) continue;
    f.generated.insert(f.generated.end(), out->token_ids.begin(), out->token_ids.end());
    f.logprobs.insert(f.logprobs.end(), out->logprobs.begin(), out->logprobs.end());
    f.prompt_logprobs.insert(f.prompt_logprobs.end(), out->prompt_logprobs.begin(), out->prompt_logprobs.end());
    if (out->finished) {
      f.reason = out->finish_reason;
      EXPECT_TRUE(out->error.empty()) << out->error;
      return f;
    }
  }
  ADD_FAILURE() << "request " << s.id() << " did not finish within a minute";
  return f;
}

// Agreement of one request's reported logprobs with the CPU reference.
struct Agreement {
  int64_t checked = 0;
  double sum_error = 0, worst_error = 0;  // |engine logprob − CPU logprob| of the same token
  double worst_gap = 0;                   // CPU's best logprob − CPU's logprob of the generated token
};

// Replays prompt + generated (all but the last) through the CPU forward pass, one sequence, and
// compares the logprobs of the tokens at positions > from_row. `prompt_override` replaces the prompt
// of the replay (the tolerance self-check).
Agreement compare_with_cpu(const Model& model, const Finished& f, int64_t from_row = 0,
                           const std::vector<int32_t>* prompt_override = nullptr) {
  std::vector<int32_t> seq = prompt_override ? *prompt_override : f.prompt;
  seq.insert(seq.end(), f.generated.begin(), f.generated.end());
  seq.pop_back();
  CpuForward cpu(model);
  DenseKvBackend dense(model.config);
  dense.add_sequence(0);
  const ForwardSeq one{0, 0, std::span<const int32_t>(seq), /*all_logits=*/true, static_cast<int64_t>(f.prompt.size())};
  std::vector<float> logits;
  cpu.forward(std::span(&one, 1), dense, logits);
  const int64_t V = model.config.vocab_size;
  // Row p's log-softmax, at id.
  const auto logprob = [&](int64_t p, int32_t id, double* best) {
    const float* row = logits.data() + p * V;
    double mx = -INFINITY, sum = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max<double>(mx, row[v]);
    for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
    const double lse = mx + std::log(sum);
    if (best) *best = mx - lse;
    return row[id] - lse;
  };
  Agreement a;
  const auto n = static_cast<int64_t>(f.prompt.size());
  const auto add = [&](double engine_lp, double cpu_lp) {
    const double e = std::abs(engine_lp - cpu_lp);
    a.sum_error += e;
    a.worst_error = std::max(a.worst_error, e);
    ++a.checked;
  };
  for (size_t i = static_cast<size_t>(from_row); i < f.prompt_logprobs.size(); ++i) {  // token i + 1 given those before
    add(f.prompt_logprobs[i].logprob, logprob(static_cast<int64_t>(i), f.prompt[i + 1], nullptr));
  }
  for (size_t k = 0; k < f.generated.size(); ++k) {
    double best = 0;
    const double lp = logprob(n - 1 + static_cast<int64_t>(k), f.generated[k], &best);
    a.worst_gap = std::max(a.worst_gap, best - lp);
    if (k < f.logprobs.size()) add(f.logprobs[k].logprob, lp);
  }
  return a;
}

Request greedy_request(const std::string& id, std::vector<int32_t> prompt, int64_t max_tokens) {
  Request r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0.0f;
  r.ignore_eos = true;
  r.logprobs = 0;
  r.prompt_logprobs = 0;
  return r;
}

// Submits requests with the given prompt lengths, drains them all, and checks every one against the
// CPU; returns the results.
std::vector<Finished> run_and_check(Engine& engine, const Model& model, std::mt19937_64& rng,
                                    const std::vector<int64_t>& prompt_lens, int64_t max_tokens) {
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(model.config.vocab_size - 1));
  std::vector<std::shared_ptr<RequestStream>> streams;
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < prompt_lens.size(); ++i) {
    std::vector<int32_t> p(static_cast<size_t>(prompt_lens[i]));
    for (int32_t& t : p) t = tok(rng);
    prompts.push_back(p);
    streams.push_back(engine.submit(greedy_request("r" + std::to_string(i), p, max_tokens)));
  }
  std::vector<Finished> done;
  for (size_t i = 0; i < streams.size(); ++i) done.push_back(drain(*streams[i], prompts[i]));
  double sum = 0, worst = 0, gap = 0;
  int64_t checked = 0;
  for (size_t i = 0; i < done.size(); ++i) {
    const Finished& f = done[i];
    SCOPED_TRACE("request " + std::to_string(i) + ", prompt " + std::to_string(f.prompt.size()));
    EXPECT_EQ(f.reason, FinishReason::kLength);
    EXPECT_EQ(static_cast<int64_t>(f.generated.size()), max_tokens);
    EXPECT_EQ(f.logprobs.size(), f.generated.size());
    EXPECT_EQ(f.prompt_logprobs.size(), f.prompt.size() - 1);
    if (f.generated.empty()) continue;
    const Agreement a = compare_with_cpu(model, f);
    // bf16 weights and activations against fp32: the forward test sees logits within 0.044 of the
    // row's largest; here a logprob's error is under 0.15, a generated token at most 0.3 under the
    // CPU's best (a near tie the rounding decided).
    EXPECT_LT(a.worst_error, 0.15);
    EXPECT_LT(a.worst_gap, 0.3);
    // The comparison tells a wrong context apart (pages of another sequence, a lost chunk): the
    // tokens of the prompt's second half and after, replayed after a different first half, read
    // clearly further from the engine's logprobs than after the right one.
    if (f.prompt.size() >= 8) {
      const auto half = static_cast<int64_t>(f.prompt.size() / 2);
      std::vector<int32_t> other = f.prompt;
      for (int64_t i = 0; i < half; ++i) other[static_cast<size_t>(i)] = (other[static_cast<size_t>(i)] + 1 + static_cast<int32_t>(i)) % static_cast<int32_t>(model.config.vocab_size);
      const Agreement right = compare_with_cpu(model, f, half), wrong = compare_with_cpu(model, f, half, &other);
      EXPECT_GT(wrong.sum_error / static_cast<double>(wrong.checked), 3 * right.sum_error / static_cast<double>(right.checked))
          << "the comparison cannot tell a wrong first half of the context apart";
    }
    sum += a.sum_error, checked += a.checked;
    worst = std::max(worst, a.worst_error), gap = std::max(gap, a.worst_gap);
  }
  std::printf("%zu requests, %lld logprobs checked: mean error %.4f, worst %.4f; worst argmax gap %.4f\n", done.size(),
              static_cast<long long>(checked), checked ? sum / static_cast<double>(checked) : 0.0, worst, gap);
  return done;
}

void wait_for_pages_back(const Engine& engine) {
  for (int i = 0; i < 100 && engine.kv_pages_in_use() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(engine.kv_pages_in_use(), 0);
}

TEST(CudaEngineTest, SmallModelConcurrentGreedyRequestsMatchTheCpuForward) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  RandomModel rm(kShape, rng);
  EngineConfig config;
  config.max_num_seqs = 4;             // more requests than slots: some wait
  config.max_num_batched_tokens = 48;  // prompts prefill in chunks, next to other sequences' decode
  config.kv_cache_bytes = size_t{64} << 20;
  Engine engine(*rm.model, small_page_profiles(rm.model->config), config, cuda_step_backend());
  EXPECT_EQ(engine.backend(), "cuda");
  run_and_check(engine, *rm.model, rng, {3, 17, 64, 65, 150, 31, 200, 1}, 24);
  wait_for_pages_back(engine);
  EXPECT_EQ(engine.metrics().num_preemptions, 0);
}

TEST(CudaEngineTest, PreemptedAndCancelledRequestsStayRightAndReturnTheirPages) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  RandomModel rm(kShape, rng);
  const ModelConfig& c = rm.model->config;
  EngineConfig config;
  config.max_num_seqs = 6;
  config.max_num_batched_tokens = 64;
  // 30 pages of 16 tokens per lane: six sequences growing to 85-110 tokens need about 40, so the
  // newest are preempted (and recomputed) as the others grow; any one alone needs at most 7.
  const kvcache::PageShape page{static_cast<int32_t>(c.head_dim), 16, 16, 2, false};
  config.kv_cache_bytes = page.page_bytes() * 30 * static_cast<size_t>(c.n_layers * c.n_kv_heads);
  Engine engine(*rm.model, small_page_profiles(c), config, cuda_step_backend());
  // A request cancelled mid-stream gives its pages back too.
  std::vector<int32_t> p(40, 7);
  auto cancelled = engine.submit(greedy_request("cancel-me", p, 1000));
  ASSERT_TRUE(cancelled->next(std::chrono::seconds(30)).has_value());
  cancelled->cancel();
  run_and_check(engine, *rm.model, rng, {60, 50, 70, 45, 66, 58}, 40);
  EXPECT_GT(engine.metrics().num_preemptions, 0);
  wait_for_pages_back(engine);
}

TEST(CudaEngineTest, ProfilesItDoesNotRunAreRefusedPerRequest) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(7);
  RandomModel rm(kShape, rng);
  ModelProfiles profiles = small_page_profiles(rm.model->config);
  const kvcache::SparsityProfile sel = selecting_profile(rm.model->config);
  profiles.profiles.emplace(sel.name, sel);
  EngineConfig config;
  config.kv_cache_bytes = size_t{16} << 20;
  Engine engine(*rm.model, std::move(profiles), config, cuda_step_backend());
  Request r = greedy_request("sparse", {1, 2, 3}, 4);
  r.sparsity = "select";
  try {
    engine.submit(r);
    FAIL() << "a request for a selecting profile was queued on the CUDA backend";
  } catch (const InvalidArgument& ex) {
    EXPECT_NE(std::string(ex.what()).find("sparsity profile 'select': it uses decode page selection"), std::string::npos)
        << ex.what();
  }
  const Finished f = drain(*engine.submit(greedy_request("dense", {1, 2, 3}, 4)), {1, 2, 3});
  EXPECT_EQ(f.generated.size(), 4u);
}

TEST(CudaStepRunnerChecks, NamesWhatAProfileUsesThatItDoesNotRun) {
  const kvcache::SparsityProfile dense = kvcache::SparsityProfile::dense(2, 2);
  EXPECT_EQ(cuda_unsupported_profile(dense), "");
  kvcache::SparsityProfile p = dense;
  p.decode.enabled = true;
  p.prefill.dynamic = true;
  EXPECT_NE(cuda_unsupported_profile(p).find("decode page selection and dynamic prefill sparsity"), std::string::npos);
  p = dense;
  p.roles = kvcache::HeadRoles(2, 2, {kvcache::HeadRole::kRetrieval, kvcache::HeadRole::kStreaming,
                                      kvcache::HeadRole::kRetrieval, kvcache::HeadRole::kRetrieval});
  EXPECT_NE(cuda_unsupported_profile(p).find("streaming heads"), std::string::npos);
}

// The engine refuses a default profile the backend does not run before it touches a device.
TEST(CudaStepRunnerChecks, DefaultProfileItDoesNotRunStopsTheEngine) {
  std::mt19937_64 rng(3);
  RandomModel rm(kShape, rng);
  ModelProfiles profiles = small_page_profiles(rm.model->config);
  const kvcache::SparsityProfile sel = selecting_profile(rm.model->config);
  profiles.profiles.emplace(sel.name, sel);
  profiles.default_profile = sel.name;
  try {
    Engine engine(*rm.model, std::move(profiles), EngineConfig{}, cuda_step_backend());
    FAIL() << "the engine started with a default profile the CUDA backend does not run";
  } catch (const InvalidArgument& ex) {
    EXPECT_NE(std::string(ex.what()).find("default sparsity profile 'select'"), std::string::npos) << ex.what();
  }
}

TEST(CudaStepRunnerChecks, WeightBytesCountEveryBf16Parameter) {
  ModelConfig c;
  c.n_layers = 2, c.hidden = 8, c.n_heads = 2, c.n_kv_heads = 1, c.head_dim = 4, c.intermediate = 16, c.vocab_size = 10;
  // Per layer: Q|K|V 16·8, O 8·8, gate|up|down 3·16·8, two norms 2·8 = 128 + 64 + 384 + 16 = 592.
  EXPECT_EQ(cuda_weight_bytes(c, /*tied_embeddings=*/true), size_t{2} * (2 * 592 + 10 * 8 + 8));
  EXPECT_EQ(cuda_weight_bytes(c, false), size_t{2} * (2 * 592 + 2 * 10 * 8 + 8));
  c.qkv_bias = true;
  EXPECT_EQ(cuda_weight_bytes(c, true), size_t{2} * (2 * (592 + 16) + 10 * 8 + 8));
}

}  // namespace
}  // namespace sparseserve::gpu_test
