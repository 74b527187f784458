// Paged prefill attention (kernels/cuda/prefill_attention.h) against its CPU twins
// (kernels/cpu/span_attention.h attend_spans per query; kernels/cpu/attention_block.h attend_block
// over gathered keys) on fresh random bf16 inputs: varlen batches of chunks after a history, per
// (sequence, KV head) rows dense causal / streaming band (sink + ring pages + the chunk's own K/V)
// / block masks (random and XAttention's, several block sizes in one launch), GQA packing, page
// sizes 16, 32, 64 and 128, page lists with gaps and partial pages, head dims 64 and 128.
// The tile-skipping run must equal the dense run under the expanded mask bit for bit (within the bf16
// tolerance for rows whose key units the Hopper kernel gathers); a one-token chunk must agree with
// the decode kernel. Outputs are poisoned (NaN) before every run. Problems and checks:
// prefill_problem.h; the key split's tests: prefill_split_test.cu.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "attention_test_util.h"
#include "common/half.h"
#include "kernels/cpu/attention_block.h"
#include "kernels/cpu/span_attention.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/prefill_attention.h"
#include "prefill_problem.h"

namespace sparseserve::kernels::cuda::prefill_test {
namespace {

// ---- against the CPU twins ------------------------------------------------------------------------

TEST(PrefillAttentionGpu, MatchesCpuTwinOverShapes) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(2024);
  for (const int32_t D : {64, 128}) {
    for (const int32_t P : {16, 32, 64, 128}) {
      for (const int32_t group : {1, 2, 3, 4, 8}) {
        const int32_t heads = rand_int(rng, 1, 3), batch = rand_int(rng, 1, 3);
        ProblemShape sh = shape(D, P, group, heads, batch, 700, 260);
        sh.modes = {Mode::kCausal, Mode::kCausalNewKv, Mode::kBand, Mode::kBlocks};
        sh.block_tokens = std::array<int32_t, 5>{16, 32, 48, 64, 128}[static_cast<size_t>(rand_int(rng, 0, 4))];
        sh.ragged_history = rand_int(rng, 0, 1) == 1;
        const PrefillProblem pr = make_problem(sh, rng);
        check_problem(pr, "D=" + std::to_string(D) + " P=" + std::to_string(P) + " group=" + std::to_string(group) +
                              " B=" + std::to_string(sh.block_tokens) + (sh.ragged_history ? " ragged" : ""));
      }
    }
  }
}

// Small enough for the sanitizers (scripts/gpu-suite.sh runs *Small* tests under them): both
// kernels, every mask, pages and new keys.
TEST(PrefillAttentionGpu, SmallEveryMaskBothKernels) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(31);
  for (const int32_t D : {64, 128}) {
    for (const int32_t P : {16, 64}) {
      ProblemShape sh = shape(D, P, 4, 2, 2, 300, 200);
      sh.modes = {Mode::kCausal, Mode::kCausalNewKv, Mode::kBand, Mode::kBlocks};
      sh.block_tokens = P == 16 ? 128 : 64;  // the Hopper kernel's two walks (tiles; units of a page)
      check_problem(make_problem(sh, rng), "small D=" + std::to_string(D) + " P=" + std::to_string(P));
    }
  }
}

TEST(PrefillAttentionGpu, LongChunksSkipBandGapAndCausalEnd) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(11);
  for (const int32_t P : {16, 64}) {
    ProblemShape sh = shape(128, P, 4, 2, 2, 3000, 1000);
    sh.min_history = 1500;
    sh.min_chunk = 600;
    sh.modes = {Mode::kCausal, Mode::kBand};
    sh.sink = 70;
    sh.local = 300;
    check_problem(make_problem(sh, rng), "long P=" + std::to_string(P));
  }
}

TEST(PrefillAttentionGpu, WholePromptsWithoutHistory) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(12);
  ProblemShape sh = shape(64, 64, 3, 3, 4, 0, 900);
  sh.modes = {Mode::kCausal, Mode::kCausalNewKv, Mode::kBand, Mode::kBlocks};
  check_problem(make_problem(sh, rng), "no history");
}

// Sparse block masks through both of the Hopper kernel's block walks. Blocks smaller than a tile: it
// gathers the visible units (pages of 16 four to a 64-key unit, 32-key units of 16-key pages, one
// 64-token page each) into tiles; group 3 puts some CTAs across two query blocks (per-unit bits), new
// keys after a partial page make units straddle blocks (per-key masks). Blocks of 128 and 256: it
// walks tiles; groups 1 and 2 put CTAs across query blocks (per-block bits).
TEST(PrefillAttentionGpu, BlockMasksByUnitsAndByTiles) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(15);
  const std::vector<std::array<int32_t, 3>> cases{{16, 64, 4}, {16, 32, 3}, {64, 64, 3},
                                                  {64, 64, 1}, {64, 128, 1}, {16, 256, 2}};  // P, B, group
  for (const auto& [P, B, group] : cases) {
    ProblemShape sh = shape(64 * (1 + rand_int(rng, 0, 1)), P, group, 2, 2, 1200, 700);
    sh.min_chunk = 200;
    sh.modes = {Mode::kBlocks};
    sh.block_tokens = B;
    sh.block_density = 0.15;
    check_problem(make_problem(sh, rng), "blocks P=" + std::to_string(P) + " B=" + std::to_string(B) +
                                             " group=" + std::to_string(group) + " D=" + std::to_string(sh.D));
  }
}

// Small enough for the sanitizers: block masks over every page size, with several block sizes in one
// launch (the walk and the TMA box rows are chosen per launch: sm90_small_blocks, sm90_box_tokens),
// lists with gaps and partial pages, blocks smaller than a page or a unit (units straddling blocks),
// and units of several pages. Per page size (P: B choices): 16: units of one page (B=16), of four
// (B=64), whole tiles (B=256); 32: 16-row boxes, units of one block (B=16), of two pages (B=64),
// tiles (B=128); 64: 16-row boxes, blocks of 8 (two per unit), 48 (units of 32, runs of 16) and 100
// keys (units of 64, runs of 8); 128: 64-row boxes, blocks of 64 gathered by units, of 128 in tiles.
TEST(PrefillAttentionGpu, SmallBlockMasksOverPageSizesGapsAndMixedBlocks) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(17);
  const std::vector<std::pair<int32_t, std::vector<int32_t>>> cases{
      {16, {16, 64, 256}}, {32, {16, 64, 128}}, {64, {8, 48, 100}}, {128, {64, 128}}};
  for (const auto& [P, blocks] : cases) {
    for (const int32_t D : {64, 128}) {
      ProblemShape sh = shape(D, P, D == 64 ? 3 : 4, 3, 2, 520, 260);
      sh.min_history = std::min(3 * P, 400);  // entries wholly before the chunk, to leave out or cut
      sh.min_chunk = 40;
      sh.modes = {Mode::kBlocks, Mode::kBlocks, Mode::kCausal};
      sh.block_choices = blocks;
      sh.block_density = 0.4;
      sh.ragged_history = true;
      const PrefillProblem pr = make_problem(sh, rng);
      // The shapes this test is for are in the problem.
      int gaps = 0, partial = 0;
      std::set<int32_t> sizes;
      for (size_t r = 0; r < pr.rows.size(); ++r) {
        const RowPages& rp = pr.pages[r];
        for (size_t e = 0; e + 1 < rp.ids.size(); ++e) {
          gaps += rp.pos0[e + 1] / P > rp.pos0[e] / P + 1;
          partial += rp.len[e] < P;
        }
        if (pr.rows[r].mask == MaskKind::kBlocks) sizes.insert(pr.rows[r].block_tokens);
      }
      EXPECT_GT(gaps, 0);
      EXPECT_GT(partial, 0);
      EXPECT_GE(sizes.size(), 2u) << "block sizes in one launch";
      check_problem(pr, "small blocks P=" + std::to_string(P) + " D=" + std::to_string(D));
    }
  }
}

TEST(PrefillAttentionGpu, XAttentionBlockMasks) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(13);
  for (const int32_t D : {64, 128}) {
    ProblemShape sh = shape(D, 64, 4, 2, 2, 1500, 800);
    sh.min_chunk = 300;
    sh.modes = {Mode::kBlocks};
    sh.xattention_blocks = true;
    check_problem(make_problem(sh, rng), "xattention D=" + std::to_string(D));
  }
}

// The blocked CPU path (attend_block over keys gathered in position order, as the engine runs
// prefill chunks) gives the same result.
TEST(PrefillAttentionGpu, MatchesAttendBlockTwin) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(14);
  ProblemShape sh = shape(128, 16, 4, 2, 2, 500, 200);
  sh.min_chunk = 16;
  sh.modes = {Mode::kCausal, Mode::kBand};
  const PrefillProblem pr = make_problem(sh, rng);
  DeviceProblem dp(pr);
  const auto got = run_prefill(pr, dp, true);
  std::vector<float> ref(got.size(), 0.0f);
  for (size_t r = 0; r < pr.rows.size(); ++r) {
    const PrefillRow& row = pr.rows[r];
    std::vector<float> keys, values;
    std::vector<int64_t> key_pos;
    for (const cpu::KeySpan& s : spans_of(pr, r)) {
      for (int32_t i = 0; i < s.n; ++i) {
        keys.insert(keys.end(), s.k + static_cast<size_t>(i) * s.stride, s.k + static_cast<size_t>(i) * s.stride + pr.D);
        values.insert(values.end(), s.v + static_cast<size_t>(i) * s.stride, s.v + static_cast<size_t>(i) * s.stride + pr.D);
        key_pos.push_back(s.pos0 + i);
      }
    }
    const cpu::AttentionMask mask =
        row.mask == MaskKind::kBand ? cpu::AttentionMask::band(row.sink, row.local) : cpu::AttentionMask::causal();
    const int64_t head0 = int64_t{row.kv_head} * pr.group * pr.D;
    cpu::attend_block(pr.q.f.data() + row.q_row0 * pr.q_stride + head0, pr.q_stride, pr.group, row.n_tokens, row.q_pos0,
                      keys.data(), values.data(), pr.D, key_pos.data(), static_cast<int64_t>(key_pos.size()), mask, nullptr,
                      pr.D, pr.scale, ref.data() + static_cast<size_t>(row.q_row0) * pr.n_q_heads() * pr.D + head0,
                      int64_t{pr.n_q_heads()} * pr.D);
  }
  expect_close(got, ref, pr.D, "attend_block twin");
}

// A one-token chunk through the prefill kernel equals the decode kernel over the same pages.
// run() checks its arguments against the plan before any launch (the stride of the new keys, the
// pool's page count), and plan() rejects a kBlocks row's missing first block row and n_tokens · group
// past int32.
// The accepted calls launch on zero inputs and must finish cleanly.
TEST(PrefillAttentionGpu, SmallRunChecksArgumentsAgainstThePlan) {
  SKIP_WITHOUT_GPU();
  constexpr int32_t D = 128, P = 64, G = 4, kKvHeads = 4, kTokens = 8;
  PrefillAttention attn({.head_dim = D, .group = G, .page_tokens = P, .kernel = PrefillKernel::kMmaSync});
  const auto zeros = [](size_t n) {
    DeviceBuffer<bf16> b(n);
    b.fill_bytes(0);
    return b;
  };
  DeviceBuffer<bf16> q = zeros(size_t{kTokens} * kKvHeads * G * D), o = zeros(q.size());
  DeviceBuffer<bf16> k = zeros(size_t{P} * D), v = zeros(k.size());
  DeviceBuffer<bf16> k_new = zeros(size_t{kTokens} * kKvHeads * D), v_new = zeros(k_new.size());
  const std::vector<int32_t> indptr{0, 1}, ids{0}, pos0{0}, len{P};
  const DeviceBuffer<int32_t> d_indptr{std::span<const int32_t>(indptr)}, d_ids{std::span<const int32_t>(ids)},
      d_pos0{std::span<const int32_t>(pos0)}, d_len{std::span<const int32_t>(len)};
  DeviceBuffer<uint8_t> allowed(64);
  allowed.fill_bytes(0);
  PrefillArgs a;
  a.q = q.data();
  a.q_stride = int64_t{kKvHeads} * G * D;
  a.o = o.data();
  a.o_stride = a.q_stride;
  a.k_new = k_new.data();
  a.v_new = v_new.data();
  a.kv_new_stride = int64_t{kKvHeads} * D;
  a.kv = {k.data(), v.data(), 1, P, D};
  a.pages = {d_indptr.data(), d_ids.data(), d_pos0.data(), d_len.data()};
  a.block_allowed = allowed.data();
  a.scale = 0.088f;
  const auto rejected_by = [&](const PrefillAttention& pa, const PrefillArgs& args, const char* what) {
    try {
      pa.run(args, nullptr);
      ADD_FAILURE() << "no exception: " << what;
    } catch (const InternalError& e) {
      EXPECT_NE(std::string(e.what()).find("prefill_attention_test.cu"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };

  // Queries at 100..103 of a block mask whose first row is block 2: block_tokens ≤ 50.
  PrefillRow blocks{.q_row0 = 0, .n_tokens = 4, .q_pos0 = 100, .kv_head = 0, .mask = MaskKind::kBlocks,
                    .block_offset = 0, .first_qblock = 2, .n_kblocks = 4, .block_tokens = 64};
  try {
    attn.plan(std::span<const PrefillRow>(&blocks, 1));
    ADD_FAILURE() << "no exception: first_qblock";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("first_qblock"), std::string::npos) << e.what();
  }
  blocks.block_tokens = 50;
  attn.plan(std::span<const PrefillRow>(&blocks, 1));
  EXPECT_NO_THROW(attn.run(a, nullptr));
  PrefillArgs no_pages = a;
  no_pages.kv.num_pages = 0;
  rejected_by(attn, no_pages, "num_pages");

  // New keys of KV head 3: the stride must hold 4 heads.
  const PrefillRow fresh{.q_row0 = 0, .n_tokens = 4, .q_pos0 = 64, .kv_head = 3, .new_kv = 1};
  attn.plan(std::span<const PrefillRow>(&fresh, 1));
  PrefillArgs short_stride = a;
  short_stride.kv_new_stride = 2 * D;
  rejected_by(attn, short_stride, "kv_new_stride");
  EXPECT_NO_THROW(attn.run(a, nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());

  // A plan that splits keys needs the workspace (its pieces past the one-page list see no key).
  PrefillAttention split({.head_dim = D, .group = G, .page_tokens = P, .min_split_keys = 128, .split_ctas = 64});
  const PrefillRow late{.q_row0 = 0, .n_tokens = 4, .q_pos0 = 1000, .kv_head = 0};
  split.plan(std::span<const PrefillRow>(&late, 1));
  ASSERT_GT(split.workspace_floats(), 0);
  rejected_by(split, a, "workspace");
  DeviceBuffer<float> ws(static_cast<size_t>(split.workspace_floats()));
  PrefillArgs with_ws = a;
  with_ws.workspace = ws.data();
  with_ws.workspace_floats = split.workspace_floats() - 1;
  rejected_by(split, with_ws, "workspace");
  with_ws.workspace_floats = split.workspace_floats();
  EXPECT_NO_THROW(split.run(with_ws, nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());

  PrefillAttention wide({.head_dim = D, .group = 64, .page_tokens = P});
  const PrefillRow long_row{.q_row0 = 0, .n_tokens = 40'000'000, .q_pos0 = 0, .kv_head = 0};
  try {
    wide.plan(std::span<const PrefillRow>(&long_row, 1));
    ADD_FAILURE() << "no exception";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("n_tokens · group"), std::string::npos) << e.what();
  }
}

TEST(PrefillAttentionGpu, OneTokenChunkEqualsDecode) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(15);
  for (const int32_t D : {64, 128}) {
    ProblemShape sh = shape(D, 16, 4, 3, 5, 3000, 1);
    sh.modes = {Mode::kCausal, Mode::kBand};
    PrefillProblem pr = make_problem(sh, rng);
    // Decode reads pages only: band rows here keep the new token in the pages instead of k_new.
    for (size_t r = 0; r < pr.rows.size(); ++r) {
      PrefillRow& row = pr.rows[r];
      if (!row.new_kv) continue;
      row.new_kv = 0;
      RowPages& rp = pr.pages[r];
      const int32_t t = row.q_pos0, b = t / pr.P;
      if (rp.ids.empty() || rp.pos0.back() != b * pr.P) {
        rp.ids.push_back(pr.num_pages++);  // a fresh page for the token's block
        rp.pos0.push_back(b * pr.P);
        rp.len.push_back(0);
        pr.k.bits.resize(static_cast<size_t>(pr.num_pages) * pr.P * D);
        pr.k.f.resize(pr.k.bits.size());
        pr.v.bits.resize(pr.k.bits.size());
        pr.v.f.resize(pr.k.bits.size());
      }
      const int32_t off = t - rp.pos0.back();
      rp.len.back() = off + 1;
      const size_t dst = (static_cast<size_t>(rp.ids.back()) * pr.P + off) * D;
      const size_t src = static_cast<size_t>(row.q_row0) * pr.kv_stride + static_cast<size_t>(row.kv_head) * D;
      for (int32_t d = 0; d < D; ++d) {
        pr.k.copy(dst + d, pr.k_new, src + d);
        pr.v.copy(dst + d, pr.v_new, src + d);
      }
    }
    DeviceProblem dp(pr);
    const auto pre = run_prefill(pr, dp, true);
    const std::vector<float> ref = reference(pr);
    expect_close(pre, ref, D, "one-token prefill");

    DecodeConfig dc;
    dc.head_dim = D;
    dc.group = pr.group;
    dc.page_tokens = pr.P;
    dc.max_rows = static_cast<int32_t>(pr.rows.size());
    dc.min_chunk_tokens = 64;
    DecodeAttention dec(dc);
    std::vector<DecodeRow> drows;
    std::vector<int32_t> row_pages;
    for (size_t r = 0; r < pr.rows.size(); ++r) {
      const PrefillRow& row = pr.rows[r];
      DecodeRow d;
      d.q_row = row.q_row0;
      d.kv_head = row.kv_head;
      d.q_pos = row.q_pos0;
      d.mask = row.mask;
      d.sink = row.sink;
      d.local = row.local;
      drows.push_back(d);
      row_pages.push_back(static_cast<int32_t>(pr.pages[r].ids.size()));
    }
    DecodeArgs a;
    a.q = dp.q.data();
    a.q_stride = pr.q_stride;
    a.o = dp.o.data();
    a.o_stride = int64_t{pr.n_q_heads()} * D;
    a.kv = {dp.k.data(), dp.v.data(), pr.num_pages, pr.P, D};
    a.pages = {dp.indptr.data(), dp.ids.data(), dp.pos0.data(), dp.len.data()};
    a.scale = pr.scale;
    dp.o.fill_bytes(0xff);
    dec.plan(drows, row_pages);
    dec.run(a);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto dout = dp.o.download<uint16_t>();
    std::vector<float> pre_f(pre.size());
    for (size_t i = 0; i < pre.size(); ++i) pre_f[i] = bf16_to_f32(pre[i]);
    expect_close(dout, pre_f, D, "decode vs one-token prefill");
    expect_close(dout, ref, D, "decode vs CPU");
  }
}

}  // namespace
}  // namespace sparseserve::kernels::cuda::prefill_test
