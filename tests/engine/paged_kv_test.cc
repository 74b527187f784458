// The paged backend's attention against an independent reference (DESIGN.md §5): the reference keeps
// every K/V in plain arrays and computes, in double, softmax attention under an explicitly built
// mask: dense causal for retrieval heads, the Λ band for streaming heads, and for decode page
// selection a brute-force Quest bound over the raw keys with the same budget rules. Steps mix
// prefill chunks (shorter and longer than a page and than the ring) and decode steps, so the ring
// wraps many times.
#include "engine/paged_kv.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "common/errors.h"
#include "engine/page_ranges.h"
#include "kernels/cpu/block_sparse.h"
#include "kvcache/kv_cache_manager.h"

namespace sparseserve {
namespace {

using kvcache::HeadRole;

ModelConfig tiny_config() {
  ModelConfig c;
  c.n_layers = 2;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  return c;
}

struct Reference {
  // history[layer][head] = rows of K (and V) by position
  std::vector<std::vector<std::vector<std::vector<float>>>> k, v;
  std::map<int64_t, std::set<int32_t>> prev_sel;  // (layer*H + head) -> selected blocks
  std::map<int64_t, int32_t> sel_blocks;          // block count at selection
};

// Brute-force Quest selection over raw keys (independent of the engine's metadata and kernels).
std::set<int32_t> brute_select(const std::vector<std::vector<float>>& keys, int64_t end, const float* q, int group,
                               int D, int P, int LP, int64_t sink, int64_t budget) {
  const int32_t nb = static_cast<int32_t>((end + P - 1) / P);
  std::vector<double> score(nb, -INFINITY);
  for (int32_t b = 0; b < nb; ++b) {
    for (int64_t s0 = int64_t{b} * P; s0 < std::min<int64_t>(end, int64_t{b + 1} * P); s0 += LP) {
      std::vector<double> mn(D, INFINITY), mx(D, -INFINITY);
      for (int64_t j = s0; j < std::min<int64_t>(end, s0 + LP); ++j) {
        for (int d = 0; d < D; ++d) {
          mn[d] = std::min<double>(mn[d], keys[j][d]);
          mx[d] = std::max<double>(mx[d], keys[j][d]);
        }
      }
      for (int g = 0; g < group; ++g) {
        double bound = 0;
        for (int d = 0; d < D; ++d) bound += std::max(q[g * D + d] * mx[d], q[g * D + d] * mn[d]);
        score[b] = std::max(score[b], bound);
      }
    }
  }
  std::set<int32_t> keep;
  int64_t tokens = 0;
  auto toks = [&](int32_t b) { return std::min<int64_t>(P, end - int64_t{b} * P); };
  const int32_t sink_blocks = static_cast<int32_t>(std::min<int64_t>((sink + P - 1) / P, nb));
  for (int32_t b = 0; b < sink_blocks; ++b) keep.insert(b), tokens += toks(b);
  if (!keep.count(nb - 1)) keep.insert(nb - 1), tokens += toks(nb - 1);
  std::vector<int32_t> rest;
  for (int32_t b = sink_blocks; b < nb - 1; ++b) rest.push_back(b);
  std::stable_sort(rest.begin(), rest.end(), [&](int32_t a, int32_t b) { return score[a] > score[b]; });
  for (int32_t b : rest) {
    if (tokens + toks(b) > budget) break;
    keep.insert(b);
    tokens += toks(b);
  }
  return keep;
}

struct Scenario {
  int32_t page_tokens, logical;
  int32_t sink, local;
  bool selection;
  int32_t budget, reselect;
  kernels::cpu::Numerics numerics = kernels::cpu::Numerics::kFast;
};

void PrintTo(const Scenario& s, std::ostream* os) {
  *os << "P" << s.page_tokens << "/LP" << s.logical << " sink " << s.sink << " local " << s.local
      << (s.selection ? " select budget " + std::to_string(s.budget) + " every " + std::to_string(s.reselect) : "")
      << (s.numerics == kernels::cpu::Numerics::kBatchInvariant ? " batch-invariant" : " fast");
}

class PagedKvTest : public ::testing::TestWithParam<Scenario> {};

TEST_P(PagedKvTest, MatchesMaskedReference) {
  const Scenario sc = GetParam();
  const ModelConfig c = tiny_config();
  const int D = static_cast<int>(c.head_dim), H = static_cast<int>(c.n_kv_heads), group = static_cast<int>(c.n_heads / c.n_kv_heads);
  const int64_t q_dim = c.n_heads * D, kv_dim = c.n_kv_heads * D, stride = q_dim + 2 * kv_dim;

  kvcache::SparsityProfile prof = kvcache::SparsityProfile::dense(2, 2);
  prof.name = "test";
  prof.roles = kvcache::HeadRoles(2, 2, {HeadRole::kRetrieval, HeadRole::kStreaming, HeadRole::kStreaming, HeadRole::kRetrieval});
  prof.streaming = kvcache::StreamingWindow{sc.sink, sc.local};
  prof.decode = {sc.selection, sc.budget, static_cast<int32_t>(sc.sink), sc.reselect, {}};

  kvcache::KvCacheManager mgr(kvcache::KvCacheConfig{sc.page_tokens, sc.logical}, 400);
  mgr.add_sequence(7, kvcache::SequenceLayout::from_roles(prof.roles, prof.streaming));
  PagedKvBackend be(c, mgr, sc.numerics);
  be.add_sequence(7, prof);

  Reference ref;
  ref.k.assign(2, std::vector<std::vector<std::vector<float>>>(H));
  ref.v = ref.k;
  std::mt19937 rng(sc.page_tokens * 100 + sc.sink + sc.local);
  std::normal_distribution<float> nd(0.0f, 1.0f);

  std::vector<int64_t> chunks = {7, 1, 40, 3, 130, 1, 17};
  const int64_t prompt_len = std::accumulate(chunks.begin(), chunks.end(), int64_t{0});
  for (int i = 0; i < 25; ++i) chunks.push_back(1);  // decode steps
  int64_t start = 0, decode_steps = 0;
  for (const int64_t n : chunks) {
    mgr.allocate(7, start + n);
    const std::vector<int32_t> toks(static_cast<size_t>(n), 0);
    const ForwardSeq s{7, start, toks, false, prompt_len};
    be.begin_step(std::span(&s, 1));
    const bool decode = n == 1 && start >= prompt_len;
    for (int64_t layer = 0; layer < 2; ++layer) {
      std::vector<float> qkv(static_cast<size_t>(n * stride)), out(static_cast<size_t>(n * q_dim), NAN);
      for (auto& x : qkv) x = nd(rng);
      be.attend(layer, std::span(&s, 1), qkv.data(), stride, out.data());
      for (int h = 0; h < H; ++h) {
        for (int64_t i = 0; i < n; ++i) {
          ref.k[layer][h].emplace_back(qkv.begin() + i * stride + q_dim + h * D, qkv.begin() + i * stride + q_dim + (h + 1) * D);
          ref.v[layer][h].emplace_back(qkv.begin() + i * stride + q_dim + kv_dim + h * D,
                                       qkv.begin() + i * stride + q_dim + kv_dim + (h + 1) * D);
        }
        const HeadRole role = prof.roles.role(static_cast<int32_t>(layer), h);
        const int64_t end = start + n;
        std::set<int32_t> blocks;  // selected blocks (decode selection)
        const bool selecting = decode && role == HeadRole::kRetrieval && sc.selection && end > sc.budget;
        if (selecting) {
          const int64_t key = layer * H + h;
          const float* q = qkv.data() + h * group * D;
          if (!ref.prev_sel.count(key) || decode_steps % sc.reselect == 0) {
            ref.prev_sel[key] = brute_select(ref.k[layer][h], end, q, group, D, sc.page_tokens, sc.logical, sc.sink, sc.budget);
            ref.sel_blocks[key] = static_cast<int32_t>((end + sc.page_tokens - 1) / sc.page_tokens);
          }
          blocks = ref.prev_sel[key];
          for (int32_t b = ref.sel_blocks[key]; b < (end + sc.page_tokens - 1) / sc.page_tokens; ++b) blocks.insert(b);
        }
        for (int64_t i = 0; i < n; ++i) {
          const int64_t t = start + i;
          for (int g = 0; g < group; ++g) {
            const int qh = h * group + g;
            const float* q = qkv.data() + i * stride + qh * D;
            std::vector<double> w;
            std::vector<int64_t> js;
            for (int64_t j = 0; j <= t; ++j) {
              bool ok = role == HeadRole::kRetrieval ? true : (j < sc.sink || t - j < sc.local);
              if (selecting) ok = blocks.count(static_cast<int32_t>(j / sc.page_tokens)) > 0;
              if (!ok) continue;
              double dot = 0;
              for (int d = 0; d < D; ++d) dot += double(q[d]) * ref.k[layer][h][j][d];
              w.push_back(dot / std::sqrt(double(D)));
              js.push_back(j);
            }
            const double mx = *std::max_element(w.begin(), w.end());
            double sum = 0;
            for (auto& x : w) sum += (x = std::exp(x - mx));
            for (int d = 0; d < D; ++d) {
              double want = 0;
              for (size_t a = 0; a < js.size(); ++a) want += w[a] / sum * ref.v[layer][h][js[a]][d];
              const float got = out[i * q_dim + qh * D + d];
              ASSERT_NEAR(got, want, 2e-5) << "layer " << layer << " head " << h << " pos " << t << " d " << d
                                           << (role == HeadRole::kStreaming ? " (streaming)" : " (retrieval)");
            }
          }
        }
      }
    }
    be.end_step(std::span(&s, 1));
    if (decode) ++decode_steps;
    start += n;
  }
  if (sc.selection && start > sc.budget) {
    EXPECT_GT(be.selection_stats().selections, 0);
    EXPECT_LT(be.selection_stats().selected_tokens, be.selection_stats().context_tokens);
  }
}

INSTANTIATE_TEST_SUITE_P(Geometries, PagedKvTest,
                         ::testing::Values(Scenario{16, 4, 5, 20, false, 0, 1}, Scenario{16, 4, 0, 7, false, 0, 1},
                                           Scenario{32, 16, 40, 33, true, 96, 3}, Scenario{64, 16, 64, 64, true, 128, 4},
                                           Scenario{128, 16, 3, 200, true, 1024, 2},  // context ≤ budget: dense
                                           Scenario{16, 16, 16, 16, true, 64, 1},
                                           Scenario{16, 4, 5, 20, false, 0, 1, kernels::cpu::Numerics::kBatchInvariant},
                                           Scenario{32, 16, 40, 33, true, 96, 3, kernels::cpu::Numerics::kBatchInvariant}));

// Both runners' copy_pages check the prefix cache's copies against their pool here.
TEST(PageRanges, CopiesOutsideThePoolAreInternalErrors) {
  const std::vector<kvcache::PageCopy> ok = {{3, 4, 8, 8}, {-1, 0, 0, 16}, {4, 2, 16, 0}};
  const std::vector<kernels::cpu::PageRangeCopy> got = page_ranges(ok, 5, 16, "runner");
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].src, 3);
  EXPECT_EQ(got[0].dst, 4);
  EXPECT_EQ(got[0].offset, 8);
  EXPECT_EQ(got[0].tokens, 8);
  EXPECT_EQ(got[1].src, -1);
  for (const kvcache::PageCopy& bad : std::vector<kvcache::PageCopy>{
           {3, 5, 0, 1}, {0, -1, 0, 1}, {5, 0, 0, 1}, {-2, 0, 0, 1}, {0, 1, -1, 1}, {0, 1, 8, 9}, {0, 1, 0, -1}}) {
    try {
      page_ranges(std::vector<kvcache::PageCopy>{ok[0], bad}, 5, 16, "runner");
      ADD_FAILURE() << "accepted " << bad.src << " " << bad.dst << " " << bad.offset << " " << bad.tokens;
    } catch (const InternalError& e) {
      EXPECT_NE(std::string(e.what()).find("runner: page copy out of range"), std::string::npos) << e.what();
    }
  }
}

// Dynamic prefill: attention under the XAttention block mask equals dense attention restricted to
// the expanded mask (computed here in double from the same mask).
TEST(BlockSparsePrefill, EqualsDenseUnderExpandedMask) {
  const ModelConfig c = tiny_config();
  const int D = 16, H = 2, group = 3;
  const int64_t q_dim = 6 * D, kv_dim = 2 * D, stride = q_dim + 2 * kv_dim;
  kvcache::SparsityProfile prof = kvcache::SparsityProfile::dense(2, 2);
  prof.prefill = {true, 16, 4, 0.6f, 0};
  kvcache::KvCacheManager mgr(kvcache::KvCacheConfig{16, 4}, 200);
  mgr.add_sequence(1, kvcache::SequenceLayout::from_roles(prof.roles, std::nullopt));
  PagedKvBackend be(c, mgr);
  be.add_sequence(1, prof);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<std::vector<float>> keys[2][2], vals[2][2];
  int64_t start = 0;
  int sparse_rows = 0;
  for (const int64_t n : {70, 45}) {  // two prefill chunks, the second not block-aligned
    mgr.allocate(1, start + n);
    const std::vector<int32_t> toks(static_cast<size_t>(n), 0);
    const ForwardSeq s{1, start, toks, false, 115};
    be.begin_step(std::span(&s, 1));
    for (int layer = 0; layer < 2; ++layer) {
      std::vector<float> qkv(static_cast<size_t>(n * stride)), out(static_cast<size_t>(n * q_dim), NAN);
      for (auto& x : qkv) x = 2.0f * nd(rng);
      be.attend(layer, std::span(&s, 1), qkv.data(), stride, out.data());
      for (int h = 0; h < H; ++h) {
        for (int64_t i = 0; i < n; ++i) {
          keys[layer][h].emplace_back(qkv.begin() + i * stride + q_dim + h * D, qkv.begin() + i * stride + q_dim + (h + 1) * D);
          vals[layer][h].emplace_back(qkv.begin() + i * stride + q_dim + kv_dim + h * D,
                                      qkv.begin() + i * stride + q_dim + kv_dim + (h + 1) * D);
        }
        std::vector<float> flat;
        for (const auto& k : keys[layer][h]) flat.insert(flat.end(), k.begin(), k.end());
        const auto mask = kernels::cpu::xattention_block_mask(qkv.data() + h * group * D, stride, group, start, n,
                                                              flat.data(), D, 16, 4, 0.6f);
        for (int64_t i = 0; i < n; ++i) {
          const int64_t t = start + i;
          const uint8_t* row = mask.row(t / 16);
          int kept = 0;
          for (int64_t kb = 0; kb <= t / 16; ++kb) kept += row[kb];
          if (kept < t / 16 + 1) ++sparse_rows;
          EXPECT_TRUE(row[0] && row[t / 16]) << "block 0 and the diagonal are always kept";
          for (int g = 0; g < group; ++g) {
            const float* q = qkv.data() + i * stride + (h * group + g) * D;
            std::vector<double> w;
            std::vector<int64_t> js;
            for (int64_t j = 0; j <= t; ++j) {
              if (!row[j / 16]) continue;
              double dot = 0;
              for (int d = 0; d < D; ++d) dot += double(q[d]) * keys[layer][h][j][d];
              w.push_back(dot / 4.0);
              js.push_back(j);
            }
            const double mx = *std::max_element(w.begin(), w.end());
            double sum = 0;
            for (auto& x : w) sum += (x = std::exp(x - mx));
            for (int d = 0; d < D; ++d) {
              double want = 0;
              for (size_t a = 0; a < js.size(); ++a) want += w[a] / sum * vals[layer][h][js[a]][d];
              ASSERT_NEAR(out[i * q_dim + (h * group + g) * D + d], want, 2e-5);
            }
          }
        }
      }
    }
    be.end_step(std::span(&s, 1));
    start += n;
  }
  EXPECT_GT(sparse_rows, 0) << "threshold 0.6 must drop some blocks";
}

}  // namespace
}  // namespace sparseserve
