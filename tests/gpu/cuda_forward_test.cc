// engine/cuda/cuda_forward (bf16 on the GPU) vs engine/cpu_forward with dense attention (fp32, the
// reference) on a random Llama-shaped model: a varlen batch over several steps (chunked prefill of
// unequal sequences, then decode steps), pages handed out interleaved across sequences so no
// sequence's pages are contiguous. Each step's logits agree within bf16 rounding and pick the same
// token where the CPU's top two are apart.
#include "engine/cuda/cuda_forward.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <random>

#include "engine/cpu_forward.h"
#include "engine/dense_kv.h"
#include "kernels/cpu/ggml_types.h"
#include "ops_test_util.h"
#include "random_model.h"

namespace sparseserve::gpu_test {
namespace {

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
    int compared = 0, top1_checked = 0;
    float worst = 0.0f;  // largest error over the row's largest logit
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
      const int64_t V = c.vocab_size, rows = static_cast<int64_t>(want.size()) / V;
      for (int64_t r = 0; r < rows; ++r) {
        const std::span<const float> g(got.data() + r * V, static_cast<size_t>(V)), w(want.data() + r * V, static_cast<size_t>(V));
        float scale = 0.0f, err = 0.0f;
        for (int64_t v = 0; v < V; ++v) {
          scale = std::max(scale, std::abs(w[v]));
          err = std::max(err, std::abs(g[v] - w[v]));
          ASSERT_TRUE(std::isfinite(g[v])) << "step " << step << " row " << r;
        }
        EXPECT_LT(err, 0.08f * scale + 0.05f) << "step " << step << " row " << r;  // seen: ≤ 0.04 · scale
        worst = std::max(worst, err / scale);
        std::vector<int64_t> order(static_cast<size_t>(V));
        for (int64_t v = 0; v < V; ++v) order[static_cast<size_t>(v)] = v;
        std::partial_sort(order.begin(), order.begin() + 2, order.end(), [&](int64_t a, int64_t b) { return w[a] > w[b]; });
        if (w[order[0]] - w[order[1]] > 4 * err + 1e-3f) {  // a clear winner must win on the GPU too
          EXPECT_EQ(std::max_element(g.begin(), g.end()) - g.begin(), order[0]) << "step " << step << " row " << r;
          ++top1_checked;
        }
        ++compared;
      }
      for (const ForwardSeq& s : batch) done[s.id] += static_cast<int64_t>(s.tokens.size());
    }
    EXPECT_GT(compared, 40);
    EXPECT_GT(top1_checked, compared / 3);
    std::printf("head_dim %lld group %lld: %d rows, worst error %.4f of the largest logit, %d top-1 checks\n",
                static_cast<long long>(shape.head_dim), static_cast<long long>(shape.heads / shape.kv_heads), compared,
                static_cast<double>(worst), top1_checked);
  }
}

}  // namespace
}  // namespace sparseserve::gpu_test
