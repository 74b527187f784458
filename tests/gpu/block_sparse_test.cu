// kernels/cuda/block_sparse (XAttentionSelect) vs its CPU twin kernels/cpu/block_sparse on fresh
// random inputs: rows of several sequences and KV heads, chunks that start and end off the stride
// and block grids, every block size with strides from 1 to the block, GQA groups 1-8, both head
// dims and two page sizes. The masses are compared with the twin's xattention_block_mass within a
// tolerance; the masks must equal the twin's select_blocks run on the GPU's own masses (the same
// values, so the same decisions). Outputs are poisoned before each run.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attention_test_util.h"
#include "kernels/cpu/block_sparse.h"
#include "kernels/cuda/block_sparse.h"

namespace sparseserve::gpu_test {
namespace {

namespace cuda = kernels::cuda;
namespace cpu = kernels::cpu;

struct Shape {
  int32_t D = 128, P = 64, group = 4, n_kv_heads = 2, batch = 2;
  int32_t max_history = 600, max_chunk = 300;
  int32_t block_tokens = 64, stride = 8;
  float threshold = 0.9f;
  int32_t max_ctas = 0;  // XAttentionConfig::max_ctas (small: long key-tile runs per CTA)
};

std::string describe(const Shape& s) {
  return "D=" + std::to_string(s.D) + " P=" + std::to_string(s.P) + " G=" + std::to_string(s.group) +
         " B=" + std::to_string(s.block_tokens) + " S=" + std::to_string(s.stride) +
         " threshold=" + std::to_string(s.threshold) + " max_ctas=" + std::to_string(s.max_ctas);
}

// Runs one random problem of `sh` on the GPU and checks it against the twin.
void check_problem(const Shape& sh, std::mt19937& rng) {
  SCOPED_TRACE(describe(sh));
  const int32_t D = sh.D, P = sh.P, G = sh.group, H = sh.n_kv_heads;
  std::vector<int32_t> history, chunk, row0;
  int32_t tokens = 0;
  for (int32_t s = 0; s < sh.batch; ++s) {
    history.push_back(rand_int(rng, 0, sh.max_history));
    chunk.push_back(rand_int(rng, 1, sh.max_chunk));
    row0.push_back(tokens);
    tokens += chunk.back();
  }
  const int64_t q_stride = int64_t{H} * G * D + 8 * rand_int(rng, 0, 1);
  const Bf16Array q = random_bf16(static_cast<size_t>(tokens) * q_stride, 1.0f, rng);

  // Each (sequence, KV head) lane: its keys 0 .. L−1 in pages drawn from a shuffled pool.
  std::vector<cuda::BlockMassRow> rows;
  std::vector<RowPages> lists;
  std::vector<int32_t> lane_pages;
  int32_t n_pages = 0;
  for (int32_t s = 0; s < sh.batch; ++s) {
    for (int32_t h = 0; h < H; ++h) {
      cuda::BlockMassRow r;
      r.q_row0 = row0[static_cast<size_t>(s)];
      r.n_tokens = chunk[static_cast<size_t>(s)];
      r.q_pos0 = history[static_cast<size_t>(s)];
      r.kv_head = h;
      r.list_row = static_cast<int32_t>(rows.size());
      r.block_tokens = sh.block_tokens;
      r.stride = sh.stride;
      r.threshold = sh.threshold;
      rows.push_back(r);
      const int32_t L = r.q_pos0 + r.n_tokens;
      lane_pages.push_back((L + P - 1) / P);
      n_pages += lane_pages.back();
    }
  }
  std::vector<int32_t> perm(static_cast<size_t>(n_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  // Keys with a wide spread (peaked softmax rows, unequal block masses); values are not read.
  const Bf16Array k = random_bf16(static_cast<size_t>(n_pages) * P * D, 2.5f, rng);
  const Bf16Array v(static_cast<size_t>(n_pages) * P * D);
  int32_t next = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    RowPages rp;
    const int32_t L = rows[i].q_pos0 + rows[i].n_tokens;
    for (int32_t b = 0; b < lane_pages[i]; ++b) {
      rp.ids.push_back(perm[static_cast<size_t>(next++)]);
      rp.pos0.push_back(b * P);
      rp.len.push_back(std::min(P, L - b * P));
    }
    lists.push_back(rp);
  }
  const HostPageLists hl(lists);
  const DeviceBuffer<bf16> dq = to_device<bf16>(q.bits), dk = to_device<bf16>(k.bits), dv = to_device<bf16>(v.bits);
  const DeviceBuffer<int32_t> ip = to_device<int32_t>(hl.indptr), ids = to_device<int32_t>(hl.ids),
                              pos0 = to_device<int32_t>(hl.pos0), len = to_device<int32_t>(hl.len);

  // Rows in a shuffled order: list_row, not the plan's order, finds each row's keys.
  std::vector<cuda::BlockMassRow> planned = rows;
  std::shuffle(planned.begin(), planned.end(), rng);
  cuda::XAttentionSelect sel({D, G, P, sh.max_ctas});
  sel.plan(planned);
  ASSERT_EQ(sel.geometry().size(), rows.size());
  ASSERT_GT(sel.mask_bytes(), 0);
  DeviceBuffer<float> workspace(static_cast<size_t>(sel.workspace_floats()));
  DeviceBuffer<float> dmass(static_cast<size_t>(sel.mask_bytes()));
  DeviceBuffer<uint8_t> dallowed(static_cast<size_t>(sel.mask_bytes()));
  workspace.fill_bytes(0xff);
  dmass.fill_bytes(0xff);
  dallowed.fill_bytes(0xff);
  cuda::XAttentionArgs args;
  args.q = dq.data();
  args.q_stride = q_stride;
  args.kv = {dk.data(), dv.data(), n_pages, P, D};
  args.pages = {ip.data(), ids.data(), pos0.data(), len.data()};
  args.scale = 1.0f / std::sqrt(static_cast<float>(D));
  args.workspace = workspace.data();
  args.mass = dmass.data();
  args.allowed = dallowed.data();
  sel.run(args);
  const std::vector<float> mass = dmass.download();
  const std::vector<uint8_t> allowed = dallowed.download();

  for (size_t i = 0; i < planned.size(); ++i) {
    const cuda::BlockMassRow& r = planned[i];
    SCOPED_TRACE("row " + std::to_string(i) + ": q_pos0=" + std::to_string(r.q_pos0) +
                 " T=" + std::to_string(r.n_tokens));
    const int32_t L = r.q_pos0 + r.n_tokens;
    std::vector<float> keys(static_cast<size_t>(L) * D);
    for (int32_t j = 0; j < L; ++j) {
      const auto& rp = lists[static_cast<size_t>(r.list_row)];
      const size_t src = (static_cast<size_t>(rp.ids[static_cast<size_t>(j / P)]) * P + j % P) * D;
      std::copy_n(k.f.begin() + static_cast<std::ptrdiff_t>(src), D, keys.begin() + static_cast<std::ptrdiff_t>(j) * D);
    }
    const cpu::BlockMass want = cpu::xattention_block_mass(q.f.data() + r.q_row0 * q_stride + r.kv_head * G * D,
                                                           q_stride, G, r.q_pos0, r.n_tokens, keys.data(), D,
                                                           r.block_tokens, r.stride);
    const cuda::BlockMaskGeometry& g = sel.geometry()[i];
    ASSERT_EQ(g.first_qblock, want.first_qblock);
    ASSERT_EQ(g.n_qblocks, want.n_qblocks);
    ASSERT_EQ(g.n_kblocks, want.n_kblocks);
    // Masses: every entry finite and written (0 past the diagonal), close to the twin's. A query
    // block's masses sum to its (row group, head) pairs, so the tolerance scales with them.
    cpu::BlockMass got = want;
    const double atol = 2e-5 * (r.block_tokens / r.stride) * G;
    int bad = 0;
    for (size_t e = 0; e < want.mass.size(); ++e) {
      const float x = mass[static_cast<size_t>(g.offset) + e];
      got.mass[e] = x;
      if (!std::isfinite(x) || std::abs(x - want.mass[e]) > atol + 1e-3 * std::abs(want.mass[e])) {
        if (bad++ < 5) {
          ADD_FAILURE() << "mass of query block " << want.first_qblock + static_cast<int64_t>(e) / want.n_kblocks
                        << ", key block " << static_cast<int64_t>(e) % want.n_kblocks << ": " << x << " vs "
                        << want.mass[e];
        }
      }
    }
    EXPECT_EQ(bad, 0);
    // Masks: the twin's selection on the GPU's masses, exactly.
    const cpu::BlockMask mask = cpu::select_blocks(got, r.threshold);
    const std::vector<uint8_t> mine(allowed.begin() + g.offset,
                                    allowed.begin() + g.offset + static_cast<int64_t>(mask.allowed.size()));
    EXPECT_EQ(mine, mask.allowed);
  }
}

Shape random_shape(std::mt19937& rng) {
  Shape sh;
  sh.D = rand_int(rng, 0, 1) ? 128 : 64;
  sh.P = rand_int(rng, 0, 1) ? 64 : 16;
  const int32_t groups[] = {1, 2, 3, 4, 8};
  sh.group = groups[rand_int(rng, 0, 4)];
  sh.n_kv_heads = rand_int(rng, 1, 2);
  sh.batch = rand_int(rng, 1, 3);
  sh.block_tokens = 16 << rand_int(rng, 0, 3);
  const int32_t log_b = std::countr_zero(static_cast<uint32_t>(sh.block_tokens));
  sh.stride = 1 << rand_int(rng, 0, log_b);
  const float thresholds[] = {1e-30f, 0.5f, 0.9f, 0.95f, 1.0f};
  sh.threshold = thresholds[rand_int(rng, 0, 4)];
  sh.max_ctas = rand_int(rng, 0, 1) ? 0 : 3;
  return sh;
}

TEST(XAttentionGpu, SmallRandomRowsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937 rng(static_cast<uint32_t>(seed));
  for (int i = 0; i < 12; ++i) {
    check_problem(random_shape(rng), rng);
    if (HasFatalFailure()) return;
  }
  // Strides 1 and 2 with the largest block: a key block fills a whole key-group tile or half of it.
  // Strides longer than a page: a key group's keys lie on several pages.
  for (const auto& [P, B, S, history, chunk] :
       {std::array{64, 128, 1, 300, 200}, std::array{64, 128, 2, 300, 200}, std::array{16, 64, 32, 600, 300},
        std::array{16, 64, 64, 600, 300}}) {
    Shape sh;
    sh.P = P;
    sh.block_tokens = B;
    sh.stride = S;
    sh.max_history = history;
    sh.max_chunk = chunk;
    check_problem(sh, rng);
  }
}

TEST(XAttentionGpu, LongRowsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937 rng(static_cast<uint32_t>(seed));
  // Thousands of positions: many key-group tiles per CTA and many CTAs per row.
  for (const auto& [B, S] : {std::pair{64, 8}, std::pair{128, 16}, std::pair{16, 4}}) {
    Shape sh;
    sh.block_tokens = B;
    sh.stride = S;
    sh.batch = 1;
    sh.n_kv_heads = 2;
    sh.group = 4;
    sh.max_history = 3000;
    sh.max_chunk = 2500;
    check_problem(sh, rng);
    sh.max_ctas = 2;  // each CTA a long run of key-group tiles
    check_problem(sh, rng);
  }
}

// The bounds a caller reserves memory by (the engine's step memory) hold for every plan: random rows
// of every block size and stride, chunks anywhere up to max_len (the plan needs a device; no kernel
// runs).
TEST(XAttentionGpu, PlansStayWithinTheWorkspaceBounds) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(4242);
  for (const int32_t G : {1, 4, 8}) {
    cuda::XAttentionSelect sel(cuda::XAttentionConfig{.head_dim = 128, .group = G, .page_tokens = 64});
    for (int trial = 0; trial < 60; ++trial) {
      const int32_t B = 16 << rand_int(rng, 0, 3), S = 1 << rand_int(rng, 0, std::countr_zero(static_cast<uint32_t>(B)));
      const int32_t max_len = rand_int(rng, 1, trial % 2 == 0 ? 3000 : 200000);
      std::vector<cuda::BlockMassRow> rows(static_cast<size_t>(rand_int(rng, 1, 12)));
      int64_t tokens = 0;
      for (cuda::BlockMassRow& r : rows) {
        r.n_tokens = rand_int(rng, 1, std::min(max_len, rand_int(rng, 0, 1) == 0 ? 40 : 5000));
        r.q_pos0 = rand_int(rng, 0, max_len - r.n_tokens);
        r.block_tokens = B;
        r.stride = S;
        tokens += r.n_tokens;
      }
      sel.plan(rows);
      const auto n = static_cast<int64_t>(rows.size());
      const std::string what = "G=" + std::to_string(G) + " B=" + std::to_string(B) + " S=" + std::to_string(S) +
                               " rows=" + std::to_string(n) + " tokens=" + std::to_string(tokens) +
                               " max_len=" + std::to_string(max_len);
      EXPECT_LE(sel.workspace_floats(), cuda::XAttentionSelect::workspace_floats_bound(G, B, S, n, tokens, max_len))
          << what;
      EXPECT_LE(sel.mask_bytes(), cuda::XAttentionSelect::mask_bytes_bound(B, n, tokens, max_len)) << what;
    }
  }
}

TEST(XAttentionGpu, ShapeCheckRefusesBadRows) {
  SKIP_WITHOUT_GPU();
  cuda::XAttentionSelect sel({128, 4, 64, 0});
  const auto refuses = [&](cuda::BlockMassRow r) {
    EXPECT_THROW(sel.plan(std::vector<cuda::BlockMassRow>{r}), InternalError);
  };
  cuda::BlockMassRow ok;
  ok.n_tokens = 100;
  sel.plan(std::vector<cuda::BlockMassRow>{ok});
  EXPECT_EQ(sel.geometry().size(), 1u);
  cuda::BlockMassRow r = ok;
  r.stride = 3;
  refuses(r);
  r = ok;
  r.block_tokens = 48;
  refuses(r);
  r = ok;
  r.stride = 128;  // does not divide 64
  refuses(r);
  r = ok;
  r.threshold = 0.0f;
  refuses(r);
  r = ok;
  r.n_tokens = 0;
  refuses(r);
  r = ok;
  r.q_pos0 = cuda::kMaxMaskKeyBlocks * 64;  // too many key blocks
  refuses(r);
  // run refuses arguments without q, pool or page list.
  cuda::XAttentionArgs args;
  EXPECT_THROW(sel.run(args), InternalError);
  EXPECT_THROW(cuda::XAttentionSelect({96, 4, 64, 0}), InternalError);
  EXPECT_THROW(cuda::XAttentionSelect({128, 4, 64, -1}), InternalError);
}

}  // namespace
}  // namespace sparseserve::gpu_test
