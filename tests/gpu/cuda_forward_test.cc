// engine/cuda/cuda_forward (bf16 on the GPU) vs engine/cpu_forward with dense attention (fp32, the
// reference) on a random Llama-shaped model: a varlen batch over several steps (chunked prefill of
// unequal sequences, then decode steps), pages handed out interleaved across sequences so no
// sequence's pages are contiguous. Each step's logits agree within bf16 rounding and pick the same
// token where the CPU's top two are apart. Dynamic prefill sparsity (XAttention block masks
// estimated on the device) against the CPU's paged backend under the same profile. Decode steps
// replayed from CUDA graphs equal the same steps launched kernel by kernel, bit for bit, under dense,
// streaming and selecting profiles.
#include "engine/cuda/cuda_forward.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <map>
#include <random>

#include "common/errors.h"
#include "engine/cpu_forward.h"
#include "engine/dense_kv.h"
#include "engine/paged_kv.h"
#include "kernels/cpu/ggml_types.h"
#include "kernels/cuda/page_select.h"
#include "ops_test_util.h"
#include "random_model.h"
#include "selecting_profile.h"

namespace sparseserve::gpu_test {
namespace {

// Rows with a clear top-1 winner vary with the seed (head_dim 64 group 4: 31, 35, 35, 36, 45, 56 of
// 93 rows over six seeds, the dense path unchanged): more than a quarter of the rows keeps the top-1
// check from being vacuous without failing on a draw.
constexpr int kTop1Share = 4;

// Logits rows of the GPU against the CPU's: within bf16 rounding of the row's largest logit, finite,
// and the same top token where the CPU's top two are clearly apart.
struct LogitsTally {
  int compared = 0, top1_checked = 0;
  float worst = 0.0f;  // largest error over the row's largest logit
  void compare(const std::vector<float>& got, const std::vector<float>& want, int64_t V) {
    ASSERT_EQ(got.size(), want.size());
    for (int64_t r = 0; r < static_cast<int64_t>(want.size()) / V; ++r) {
      const std::span<const float> g(got.data() + r * V, static_cast<size_t>(V)), w(want.data() + r * V, static_cast<size_t>(V));
      float scale = 0.0f, err = 0.0f;
      for (int64_t v = 0; v < V; ++v) {
        scale = std::max(scale, std::abs(w[v]));
        err = std::max(err, std::abs(g[v] - w[v]));
        ASSERT_TRUE(std::isfinite(g[v])) << "row " << r;
      }
      EXPECT_LT(err, 0.08f * scale + 0.05f) << "row " << r;  // seen: ≤ 0.04 · scale
      worst = std::max(worst, err / scale);
      std::vector<int64_t> order(static_cast<size_t>(V));
      for (int64_t v = 0; v < V; ++v) order[static_cast<size_t>(v)] = v;
      std::partial_sort(order.begin(), order.begin() + 2, order.end(), [&](int64_t a, int64_t b) { return w[a] > w[b]; });
      if (w[order[0]] - w[order[1]] > 4 * err + 1e-3f) {  // a clear winner must win on the GPU too
        EXPECT_EQ(std::max_element(g.begin(), g.end()) - g.begin(), order[0]) << "row " << r;
        ++top1_checked;
      }
      ++compared;
    }
  }
};

// Two page managers of one geometry given the same calls, so that two engines under comparison each
// read their own pages, laid out alike.
struct TwinPages {
  kvcache::KvCacheManager first, second;
  TwinPages(const kvcache::KvCacheConfig& geometry, int64_t pages) : first(geometry, pages), second(geometry, pages) {}
  void add_sequence(uint64_t id, const kvcache::SparsityProfile& profile) {
    for (kvcache::KvCacheManager* m : {&first, &second}) {
      m->add_sequence(id, kvcache::SequenceLayout::from_roles(profile.roles, profile.streaming));
    }
  }
  void allocate(uint64_t id, int64_t tokens) {
    for (kvcache::KvCacheManager* m : {&first, &second}) m->allocate(id, tokens);
  }
};

TEST(CudaForwardTest, SmallModelStepsMatchTheCpuForward) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const ModelShape shapes[] = {
      {3, 256, 8, 2, 64, 512, 600, RopeLayout::kInterleaved, false},  // GQA 4, head_dim 64
      {2, 512, 4, 4, 128, 768, 500, RopeLayout::kHalf, true},         // MHA, head_dim 128, QKV bias
      {2, 384, 6, 1, 64, 640, 300, RopeLayout::kHalf, false},         // GQA 6 (one KV head)
  };
  for (const ModelShape& shape : shapes) {
    SCOPED_TRACE("head_dim " + std::to_string(shape.head_dim) + " group " + std::to_string(shape.heads / shape.kv_heads));
    RandomModel rm(shape, rng);
    const Model& model = *rm.model;
    const ModelConfig& c = model.config;
    kvcache::KvCacheManager manager(kvcache::KvCacheConfig{.page_tokens = 16, .logical_page_tokens = 16}, 4096);
    const kvcache::HeadRoles roles =
        kvcache::HeadRoles::all_retrieval(static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads));
    CudaForward gpu(model, manager);
    const kvcache::SparsityProfile dense_profile =
        kvcache::SparsityProfile::dense(static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads));
    CpuForward cpu(model);
    DenseKvBackend dense(c);
    // Three sequences: prompts of 37, 80 and 5 tokens, prefilled in chunks (≤ 29 tokens a step),
    // then 6 decode steps each; a step's growth is allocated one sequence after another, one page
    // at a time, so the sequences' pages interleave in the pool.
    const std::vector<int64_t> prompt = {37, 80, 5};
    std::vector<std::vector<int32_t>> tokens(prompt.size());
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(c.vocab_size - 1));
    for (size_t i = 0; i < prompt.size(); ++i) {
      manager.add_sequence(i, kvcache::SequenceLayout::from_roles(roles, std::nullopt));
      gpu.add_sequence(i, dense_profile);
      dense.add_sequence(i);
      for (int64_t t = 0; t < prompt[i]; ++t) tokens[i].push_back(tok(rng));
    }
    std::vector<int64_t> done(prompt.size(), 0);
    LogitsTally tally;
    for (int step = 0; step < 12; ++step) {
      std::vector<ForwardSeq> batch;
      for (size_t i = 0; i < prompt.size(); ++i) {
        const bool prefill = done[i] < prompt[i];
        const int64_t n = prefill ? std::min<int64_t>(29, prompt[i] - done[i]) : (step < 11 ? 1 : 0);
        if (n == 0) continue;
        if (!prefill && done[i] == static_cast<int64_t>(tokens[i].size())) tokens[i].push_back(tok(rng));
        for (int64_t len = manager.sequence(i).length(); len < done[i] + n;) {
          len = std::min<int64_t>(done[i] + n, (len / 16 + 1) * 16);
          manager.allocate(i, len);
        }
        batch.push_back(ForwardSeq{i, done[i], std::span(tokens[i]).subspan(static_cast<size_t>(done[i]), static_cast<size_t>(n)),
                                   /*all_logits=*/step % 3 == 0, prompt[i]});
      }
      std::vector<float> want, got;
      cpu.forward(batch, dense, want);
      gpu.forward(batch, got);
      ASSERT_EQ(got.size(), want.size());
      SCOPED_TRACE("step " + std::to_string(step));
      tally.compare(got, want, c.vocab_size);
      for (const ForwardSeq& s : batch) done[s.id] += static_cast<int64_t>(s.tokens.size());
    }
    EXPECT_GT(tally.compared, 40);
    EXPECT_GT(tally.top1_checked, tally.compared / kTop1Share);
    std::printf("head_dim %lld group %lld: %d rows, worst error %.4f of the largest logit, %d top-1 checks\n",
                static_cast<long long>(shape.head_dim), static_cast<long long>(shape.heads / shape.kv_heads),
                tally.compared, static_cast<double>(tally.worst), tally.top1_checked);
  }
}

// Sequences leave and join between decode steps (from CUDA graphs): a newcomer takes a leaver's
// region of the device's block store (its stale pages past the newcomer's blocks), and more
// sequences than it was reserved for grow it (a new buffer, the old regions copied, every graph's store
// address changed). Every step's logits still match the CPU's.
TEST(CudaForwardTest, SequencesLeavingAndJoiningReadTheirOwnPages) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  RandomModel rm({2, 256, 8, 2, 64, 512, 600, RopeLayout::kHalf, false}, rng);
  const Model& model = *rm.model;
  const ModelConfig& c = model.config;
  kvcache::KvCacheManager manager(kvcache::KvCacheConfig{.page_tokens = 16, .logical_page_tokens = 16}, 2048);
  const kvcache::SparsityProfile dense =
      kvcache::SparsityProfile::dense(static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads));
  CudaForward gpu(model, manager);
  EXPECT_THROW(gpu.reserve_sequences(int64_t{1} << 40), InvalidArgument) << "past int32 offsets";
  gpu.reserve_sequences(3);  // room for 3: the 9 below still grow it
  CpuForward cpu(model);
  DenseKvBackend reference(c);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(c.vocab_size - 1));
  std::map<uint64_t, std::vector<int32_t>> tokens;
  std::map<uint64_t, int64_t> done;
  const auto join = [&](uint64_t id, int64_t prompt) {
    manager.add_sequence(id, kvcache::SequenceLayout::from_roles(dense.roles, dense.streaming));
    gpu.add_sequence(id, dense);
    reference.add_sequence(id);
    for (int64_t t = 0; t < prompt; ++t) tokens[id].push_back(tok(rng));
    done[id] = 0;
  };
  const auto leave = [&](uint64_t id) {
    gpu.release(id);
    manager.release(id);
    reference.release(id);
    tokens.erase(id);
    done.erase(id);
  };
  LogitsTally tally;
  // One step for every sequence: its whole prompt, or one decode token.
  const auto step = [&](int k) {
    std::vector<ForwardSeq> batch;
    for (auto& [id, t] : tokens) {
      if (done[id] == static_cast<int64_t>(t.size())) t.push_back(tok(rng));
      const int64_t n = static_cast<int64_t>(t.size()) - done[id];
      manager.allocate(id, done[id] + n);
      batch.push_back(ForwardSeq{id, done[id], std::span(t).subspan(static_cast<size_t>(done[id])), false,
                                 done[id] == 0 ? n : done[id]});
    }
    std::vector<float> want, got;
    cpu.forward(batch, reference, want);
    gpu.forward(batch, got);
    SCOPED_TRACE("step " + std::to_string(k));
    tally.compare(got, want, c.vocab_size);
    for (const ForwardSeq& s : batch) done[s.id] += static_cast<int64_t>(s.tokens.size());
  };
  join(0, 90);
  join(1, 40);
  int k = 0;
  for (; k < 6; ++k) step(k);
  leave(0);
  join(2, 20);  // region 0: sequence 0's 6 blocks a lane there, sequence 2's 2
  for (; k < 12; ++k) step(k);
  for (uint64_t id = 3; id < 9; ++id) join(id, 17 + static_cast<int64_t>(id));  // the store grows
  for (; k < 18; ++k) step(k);
  leave(1);
  for (; k < 22; ++k) step(k);
  EXPECT_GT(gpu.graph_stats().replays, 0);
  EXPECT_GT(tally.top1_checked, tally.compared / kTop1Share);
  std::printf("%d rows, worst error %.4f of the largest logit; graphs: %lld replays, %lld updates, %lld captures\n",
              tally.compared, static_cast<double>(tally.worst), static_cast<long long>(gpu.graph_stats().replays),
              static_cast<long long>(gpu.graph_stats().updates),
              static_cast<long long>(gpu.graph_stats().instantiations));
}

// Dynamic prefill sparsity: the GPU estimates each retrieval chunk's block mask (XAttentionSelect)
// where the CPU's paged backend runs the twin. At a threshold of 1e-30 a query block keeps key block 0
// and its own only (no mass decides anything, so both masks are equal whatever the rounding), at 1.0
// every block whose mass counts; chunks start and end off the block grid, streaming heads beside.
// Runs sequences under `profiles` (prompt lengths `prompt`) through a CudaForward and the CPU forward
// over the paged backend (PagedKvBackend, the CPU's attention semantics), each on its own twin pages:
// prompts in chunks of up to `chunk` tokens, then one-token decode steps, `steps` steps in all, every
// row's logits compared. split_keys ≥ 0 is the CudaForward's SPARSESERVE_PREFILL_SPLIT (the prefill
// key split's min_split_keys) while it is made.
LogitsTally run_against_paged_cpu(const Model& model, const std::vector<const kvcache::SparsityProfile*>& profiles,
                                  const std::vector<int64_t>& prompt, int64_t chunk, int steps, std::mt19937_64& rng,
                                  int split_keys = -1) {
  const ModelConfig& c = model.config;
  TwinPages pages(kvcache::KvCacheConfig{.page_tokens = 16, .logical_page_tokens = 16}, 2048);
  if (split_keys >= 0) {
    EXPECT_EQ(setenv("SPARSESERVE_PREFILL_SPLIT", std::to_string(split_keys).c_str(), 1), 0);
  }
  CudaForward gpu(model, pages.first);
  unsetenv("SPARSESERVE_PREFILL_SPLIT");
  CpuForward cpu(model);
  PagedKvBackend reference(c, pages.second);
  std::vector<std::vector<int32_t>> tokens(prompt.size());
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(c.vocab_size - 1));
  for (uint64_t i = 0; i < prompt.size(); ++i) {
    pages.add_sequence(i, *profiles[i]);
    gpu.add_sequence(i, *profiles[i]);
    reference.add_sequence(i, *profiles[i]);
    for (int64_t t = 0; t < prompt[i]; ++t) tokens[i].push_back(tok(rng));
  }
  std::vector<int64_t> done(prompt.size(), 0);
  LogitsTally tally;
  for (int step = 0; step < steps; ++step) {
    std::vector<ForwardSeq> batch;
    for (uint64_t i = 0; i < prompt.size(); ++i) {
      const bool prefill = done[i] < prompt[i];
      const int64_t n = prefill ? std::min<int64_t>(chunk, prompt[i] - done[i]) : 1;
      if (!prefill && done[i] == static_cast<int64_t>(tokens[i].size())) tokens[i].push_back(tok(rng));
      pages.allocate(i, done[i] + n);
      batch.push_back(ForwardSeq{i, done[i], std::span(tokens[i]).subspan(static_cast<size_t>(done[i]), static_cast<size_t>(n)),
                                 /*all_logits=*/true, prompt[i]});
    }
    std::vector<float> want, got;
    cpu.forward(batch, reference, want);
    gpu.forward(batch, got);
    SCOPED_TRACE("step " + std::to_string(step));
    tally.compare(got, want, c.vocab_size);
    for (const ForwardSeq& s : batch) done[s.id] += static_cast<int64_t>(s.tokens.size());
  }
  return tally;
}

// A two-layer GQA-4 model of head dim 64 on fresh random weights (the seed in every failure's trace).
class CudaForwardGqaTest : public testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_GPU(); }
  const uint64_t seed = test_seed();
  const testing::ScopedTrace trace{__FILE__, __LINE__, seed_trace(seed)};
  std::mt19937_64 rng{seed};
  RandomModel rm{{2, 256, 8, 2, 64, 512, 600, RopeLayout::kHalf, false}, rng};
  const Model& model = *rm.model;
  const int32_t L = static_cast<int32_t>(model.config.n_layers), KV = static_cast<int32_t>(model.config.n_kv_heads);
};

TEST_F(CudaForwardGqaTest, DynamicPrefillMatchesTheCpuPagedBackend) {
  for (const float threshold : {1e-30f, 1.0f}) {
    SCOPED_TRACE("threshold " + std::to_string(threshold));
    kvcache::SparsityProfile sparse = kvcache::SparsityProfile::dense(L, KV);
    sparse.name = "xattn";
    sparse.prefill = {.dynamic = true, .block_tokens = 16, .stride = 4, .threshold = threshold, .min_prompt_tokens = 40};
    kvcache::SparsityProfile mixed = selecting_profile(L, KV);  // streaming heads and decode selection too
    mixed.decode.enabled = false;
    mixed.prefill = {.dynamic = true, .block_tokens = 32, .stride = 8, .threshold = threshold, .min_prompt_tokens = 40};
    // Prompts of 150, 97 and 30 tokens (the last under min_prompt_tokens: dense), in chunks of up to
    // 37, then decode steps.
    const LogitsTally tally = run_against_paged_cpu(model, {&sparse, &mixed, &sparse}, {150, 97, 30}, 37, 8, rng);
    EXPECT_GT(tally.top1_checked, tally.compared / kTop1Share);
    std::printf("threshold %g: %d rows, worst error %.4f of the largest logit, %d top-1 checks\n",
                static_cast<double>(threshold), tally.compared, static_cast<double>(tally.worst), tally.top1_checked);
  }
}

// The prefill's key split in the forward pass (min_split_keys 128 through SPARSESERVE_PREFILL_SPLIT):
// chunks of 60 tokens after up to 360 keys in 16-token pages split their dense and block-mask rows'
// tiles into pieces of 128 keys (12 tiles a step, far under a wave), every layer's pieces through the
// one workspace the step shares; streaming rows split their sink and ring pages once the window
// (sink 16 + local 200) fills. Dense, streaming heads, and dynamic prefill sparsity, as the CPU's
// paged backend computes them.
TEST_F(CudaForwardGqaTest, KeySplitPrefillMatchesTheCpuPagedBackend) {
  const kvcache::SparsityProfile dense = kvcache::SparsityProfile::dense(L, KV);
  kvcache::SparsityProfile mixed = selecting_profile(L, KV);  // streaming heads
  mixed.decode.enabled = false;
  mixed.streaming = kvcache::StreamingWindow{16, 200};
  kvcache::SparsityProfile xattn = kvcache::SparsityProfile::dense(L, KV);
  xattn.name = "xattn";
  // Block 0 and the diagonal only (a threshold near the estimate's rounding would let the GPU's bf16
  // and the CPU's fp32 estimates keep different blocks): most pieces of a block-mask tile see no key.
  xattn.prefill = {.dynamic = true, .block_tokens = 32, .stride = 8, .threshold = 1e-30f, .min_prompt_tokens = 40};
  const LogitsTally tally = run_against_paged_cpu(model, {&dense, &mixed, &xattn}, {400, 300, 260}, 60, 9, rng, 128);
  EXPECT_GT(tally.compared, 150);
  EXPECT_GT(tally.top1_checked, tally.compared / kTop1Share);
  std::printf("key split: %d rows, worst error %.4f of the largest logit, %d top-1 checks\n", tally.compared,
              static_cast<double>(tally.worst), tally.top1_checked);
}

TEST(CudaForwardTest, DecodeStepsFromCudaGraphsEqualStepsLaunchedKernelByKernel) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  RandomModel rm({3, 256, 8, 2, 64, 512, 600, RopeLayout::kHalf, false}, rng);
  const Model& model = *rm.model;
  const ModelConfig& c = model.config;
  const kvcache::KvCacheConfig geometry{.page_tokens = 16, .logical_page_tokens = 16};
  TwinPages pages(geometry, 2048);
  CudaForward graphs(model, pages.first);
  ASSERT_EQ(setenv("SPARSESERVE_CUDA_GRAPHS", "0", 1), 0);
  CudaForward eager(model, pages.second);
  unsetenv("SPARSESERVE_CUDA_GRAPHS");
  const kvcache::SparsityProfile dense =
      kvcache::SparsityProfile::dense(static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads));
  const kvcache::SparsityProfile select =
      selecting_profile(static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads));
  const kvcache::SparsityProfile* profiles[] = {&dense, &select, &select};
  const std::vector<int64_t> prompt = {70, 45, 100};
  std::vector<std::vector<int32_t>> tokens(prompt.size());
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(c.vocab_size - 1));
  for (uint64_t i = 0; i < prompt.size(); ++i) {
    pages.add_sequence(i, *profiles[i]);
    graphs.add_sequence(i, *profiles[i]);
    eager.add_sequence(i, *profiles[i]);
    for (int64_t t = 0; t < prompt[i]; ++t) tokens[i].push_back(tok(rng));
  }
  // Prefill (launched in both), then decode steps: all three sequences, then sequence 1 paused (a
  // new graph shape), then all three again (the first shape's graph, updated). Row 0's token is
  // drawn on the device (seeded sampling inside the graph).
  int64_t decode_steps = 0;
  for (int step = 0; step < 75; ++step) {
    std::vector<ForwardSeq> batch;
    for (uint64_t i = 0; i < prompt.size(); ++i) {
      if (step > 0 && i == 1 && step >= 40 && step < 60) continue;
      const int64_t start = static_cast<int64_t>(tokens[i].size()) - (step == 0 ? prompt[i] : 0);
      if (step > 0) tokens[i].push_back(tok(rng));
      const int64_t n = static_cast<int64_t>(tokens[i].size()) - start;
      pages.allocate(i, start + n);
      batch.push_back(ForwardSeq{i, start, std::span(tokens[i]).subspan(static_cast<size_t>(start)), false, prompt[i]});
    }
    const DeviceDraw draw{.row = 0, .temperature = 0.8f, .top_k = 20, .top_p = 0.9f, .min_p = 0.0f, .seed = 7,
                          .step = static_cast<uint64_t>(step)};
    std::vector<float> got, want;
    std::vector<int32_t> got_drawn, want_drawn;
    graphs.forward(batch, std::span(&draw, 1), got, got_drawn);
    eager.forward(batch, std::span(&draw, 1), want, want_drawn);
    ASSERT_EQ(got.size(), want.size());
    ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "step " << step;
    ASSERT_EQ(got_drawn, want_drawn) << "step " << step;
    decode_steps += step > 0;
  }
  const StepGraphStats& g = graphs.graph_stats();
  EXPECT_EQ(g.replays + g.updates + g.instantiations, decode_steps);
  EXPECT_GE(g.instantiations, 2);  // two shapes
  EXPECT_GT(g.replays, g.updates);  // most steps launch an unchanged graph
  EXPECT_EQ(eager.graph_stats().replays + eager.graph_stats().updates + eager.graph_stats().instantiations, 0);
  EXPECT_EQ(graphs.selection_stats().selections, eager.selection_stats().selections);
  EXPECT_GT(graphs.selection_stats().selections, 0);
  std::printf("%lld decode steps: %lld replays, %lld updates, %lld captures into new graphs\n",
              static_cast<long long>(decode_steps), static_cast<long long>(g.replays), static_cast<long long>(g.updates),
              static_cast<long long>(g.instantiations));
}

// A decode step with more fresh page selections in one layer than one page_select launch takes
// (kernels/cuda/page_select.h: kPageSelectMaxRows): 8,200 sequences × 8 retrieval lanes, every one
// past its budget and reselecting every step, split over two launches. Its logits equal those of
// the same sequences decoded half a step at a time on a twin (within the rounding of the decode
// kernel's other split-KV plan), and both selected alike.
TEST(CudaForwardTest, MoreFreshSelectionsThanOneLaunchTakesAreSplit) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  RandomModel rm({1, 512, 8, 8, 64, 512, 256, RopeLayout::kHalf, false}, rng);
  const Model& model = *rm.model;
  const ModelConfig& c = model.config;
  constexpr uint64_t kSeqs = 8200;  // 65,600 rows a layer
  static_assert(kSeqs * 8 > static_cast<uint64_t>(kernels::cuda::kPageSelectMaxRows));
  constexpr int64_t kPrompt = 40;
  kvcache::SparsityProfile select =
      kvcache::SparsityProfile::dense(static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads));
  select.name = "select";
  select.decode = {.enabled = true, .token_budget = 32, .sink_tokens = 16, .reselect_interval = 1, .dense_layers = {}};
  TwinPages pages(kvcache::KvCacheConfig{.page_tokens = 16, .logical_page_tokens = 16}, kSeqs * 8 * 4);
  CudaForward whole(model, pages.first), halves(model, pages.second);
  std::vector<std::vector<int32_t>> tokens(kSeqs);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(c.vocab_size - 1));
  for (uint64_t i = 0; i < kSeqs; ++i) {
    pages.add_sequence(i, select);
    whole.add_sequence(i, select);
    halves.add_sequence(i, select);
    for (int64_t t = 0; t < kPrompt; ++t) tokens[i].push_back(tok(rng));
  }
  // One row of sequence i: its tokens from `start` on.
  const auto row = [&](uint64_t i, int64_t start) {
    return ForwardSeq{i, start, std::span(tokens[i]).subspan(static_cast<size_t>(start)), false, kPrompt};
  };
  std::vector<ForwardSeq> batch;
  for (uint64_t i = 0; i < kSeqs; ++i) {
    pages.allocate(i, kPrompt);
    batch.push_back(row(i, 0));
  }
  std::vector<float> got, want, half;
  whole.forward(batch, got);
  halves.forward(batch, want);
  LogitsTally tally;
  for (int step = 0; step < 2; ++step) {
    batch.clear();
    for (uint64_t i = 0; i < kSeqs; ++i) {
      tokens[i].push_back(tok(rng));
      const auto start = static_cast<int64_t>(tokens[i].size()) - 1;
      pages.allocate(i, start + 1);
      batch.push_back(row(i, start));
    }
    whole.forward(batch, got);
    want.clear();
    for (const size_t from : {size_t{0}, batch.size() / 2}) {
      const std::span<const ForwardSeq> part = std::span(batch).subspan(from, batch.size() / 2);
      halves.forward(std::vector<ForwardSeq>(part.begin(), part.end()), half);
      want.insert(want.end(), half.begin(), half.end());
    }
    SCOPED_TRACE("decode step " + std::to_string(step));
    tally.compare(got, want, c.vocab_size);
  }
  EXPECT_EQ(tally.compared, static_cast<int>(2 * kSeqs));
  EXPECT_LT(tally.worst, 0.02f);
  EXPECT_EQ(whole.selection_stats().selections, halves.selection_stats().selections);
  EXPECT_EQ(whole.selection_stats().selections, static_cast<int64_t>(2 * kSeqs * 8));
  EXPECT_EQ(whole.selection_stats().selected_tokens, halves.selection_stats().selected_tokens);
  std::printf("%llu sequences, two decode steps: worst difference %.5f of the largest logit\n",
              static_cast<unsigned long long>(kSeqs), static_cast<double>(tally.worst));
}

}  // namespace
}  // namespace sparseserve::gpu_test
