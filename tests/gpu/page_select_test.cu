// kernels/cuda/page_select vs kernels/cpu/page_select (page_score, select_pages).
//  - Exact inputs: q small integers and kmin/kmax (bf16, as the pool stores them) small multiples of
//    1/4, so every product and partial sum is exact in fp32 and the GPU scores equal the CPU's bit for
//    bit whatever the summation order; scores then tie often, which checks the tie rule (lower block
//    first) exactly.
//  - Continuous random inputs: scores within fp tolerance; the selection equals select_pages run on
//    the GPU's own scores always, and on the CPU's scores whenever the boundary between selected
//    and unselected scores is wider than the tolerance (the test checks that this is the usual case).
//  - Every run also checks the decode positions (selected_pos0 / selected_len) and, on every other
//    case, leaves selected_blocks null (the blocks are then read back from the positions).
//  - Every third case writes the queries by a late producer kernel just before the selection
//    (tests/gpu/late_copy.cuh): the programmatic launch must wait for it.
//  - Every case runs page_select twice on one workspace (row_ready), the outputs and scores poisoned
//    in between, and checks that the workspace is left zero; every fifth case launches without
//    programmatic launch.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "kernels/cpu/page_select.h"
#include "kernels/cuda/page_select.h"
#include "late_copy.cuh"
#include "ops_test_util.h"

namespace sparseserve::gpu_test {
namespace {

namespace cuda = kernels::cuda;
namespace cpu = kernels::cpu;

struct SelectCase {
  cuda::PageSelectConfig config;
  int32_t head_dim, group;
  std::vector<int32_t> seq_lens;
  bool with_blocks = true;  // request selected_blocks (else null: blocks from selected_pos0)
  bool late_q = false;      // q written by late_copy right before page_select, on its stream
  bool pdl = true;          // PageSelectArgs::programmatic_launch
};

struct SelectResult {
  std::vector<float> gpu_scores, cpu_scores;
  std::vector<int32_t> page_indptr, page_indices, selected_indptr, selected_pages, selected_blocks;
  std::vector<int32_t> selected_pos0, selected_len;
  std::vector<float> score_scale;  // per listed page: Σ_d max |q_d·k_d| (for the tolerance)
};

// Draws the pool and queries, runs the GPU, and the CPU twin on the same values.
SelectResult run_case(const SelectCase& c, bool exact, std::mt19937_64& rng) {
  const int32_t P = c.config.page_tokens, LP = c.config.logical_page_tokens, SP = P / LP, D = c.head_dim;
  const auto rows = static_cast<int32_t>(c.seq_lens.size());
  SelectResult r;
  r.page_indptr.push_back(0);
  int32_t max_blocks = 0;
  for (int32_t len : c.seq_lens) {
    const int32_t n = (len + P - 1) / P;
    max_blocks = std::max(max_blocks, n);
    r.page_indptr.push_back(r.page_indptr.back() + n);
  }
  const int32_t total_pages = r.page_indptr.back();
  const int32_t num_pages = total_pages + 5;  // a few pages nobody lists
  std::vector<int32_t> perm(static_cast<size_t>(num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  r.page_indices.assign(perm.begin(), perm.begin() + total_pages);

  // Sub-page bounds: kmin ≤ kmax element-wise, bf16 (rounding keeps the order).
  std::vector<float> kmin_f(size_t(num_pages) * SP * D), kmax_f(kmin_f.size());
  std::uniform_int_distribution<int> quarter(-32, 32);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (size_t i = 0; i < kmin_f.size(); ++i) {
    float a, b;
    if (exact) {
      a = float(quarter(rng)) * 0.25f;
      b = float(quarter(rng)) * 0.25f;
    } else {
      a = normal(rng);
      b = normal(rng);
    }
    kmin_f[i] = std::min(a, b);
    kmax_f[i] = std::max(a, b);
  }
  const Bf16Data kmin_h = to_bf16(kmin_f), kmax_h = to_bf16(kmax_f);
  const std::vector<float>& kmin = kmin_h.f;
  const std::vector<float>& kmax = kmax_h.f;
  // Queries: row r's group at q_offset[r], heads contiguous; rows laid out with a gap between them.
  const int64_t row_stride = int64_t(c.group) * D + 8;
  std::vector<float> qf(size_t(rows * row_stride));
  std::uniform_int_distribution<int> small(-8, 8);
  for (float& v : qf) v = exact ? float(small(rng)) : normal(rng);
  const Bf16Data q = to_bf16(qf);
  std::vector<int64_t> q_offset(static_cast<size_t>(rows));
  for (int32_t i = 0; i < rows; ++i) q_offset[size_t(i)] = i * row_stride;

  r.selected_indptr = cuda::plan_selected_indptr(c.seq_lens, c.config);
  const int32_t total_selected = r.selected_indptr.back();

  auto dq = to_device(q);
  auto dq_offset = to_device<int64_t>(q_offset);
  auto dkmin = to_device(kmin_h);
  auto dkmax = to_device(kmax_h);
  auto dpage_indptr = to_device<int32_t>(r.page_indptr);
  auto dpage_indices = to_device<int32_t>(r.page_indices);
  auto dseq = to_device<int32_t>(c.seq_lens);
  auto dscores = poisoned<float>(size_t(std::max(total_pages, 1)));
  auto dsel_indptr = to_device<int32_t>(r.selected_indptr);
  auto dsel_pages = poisoned<int32_t>(size_t(std::max(total_selected, 1)));
  auto dsel_blocks = poisoned<int32_t>(size_t(std::max(total_selected, 1)));
  auto dsel_pos0 = poisoned<int32_t>(size_t(std::max(total_selected, 1)));
  auto dsel_len = poisoned<int32_t>(size_t(std::max(total_selected, 1)));
  cuda::PageSelectArgs a;
  a.config = c.config;
  a.rows = rows;
  a.head_dim = D;
  a.group = c.group;
  a.max_blocks = max_blocks;
  a.q = dq.data();
  a.q_offset = dq_offset.data();
  a.kmin = dkmin.data();
  a.kmax = dkmax.data();
  a.page_indptr = dpage_indptr.data();
  a.page_indices = dpage_indices.data();
  a.seq_lens = dseq.data();
  a.scores = dscores.data();
  a.selected_indptr = dsel_indptr.data();
  a.selected_pages = dsel_pages.data();
  a.selected_blocks = c.with_blocks ? dsel_blocks.data() : nullptr;
  a.selected_pos0 = dsel_pos0.data();
  a.selected_len = dsel_len.data();
  auto drow_ready = to_device<uint32_t>(std::vector<uint32_t>(size_t(rows), 0u));
  a.row_ready = drow_ready.data();
  a.programmatic_launch = c.pdl;
  cudaStream_t stream = nullptr;
  DeviceBuffer<bf16> dq_src;
  if (c.late_q) {
    CUDA_CHECK(cudaStreamCreate(&stream));
    dq_src = to_device(q);
    dq.fill_bytes(0xff, stream);
    late_copy(dq_src.data(), dq.data(), dq.bytes(), stream);
  }
  // Twice, every output poisoned again in between: the second call finds the workspace as the first
  // left it, and its selection must wait for its own scores.
  cuda::page_select(a, stream);
  for (auto* out : {&dsel_pages, &dsel_blocks, &dsel_pos0, &dsel_len}) out->fill_bytes(0xff, stream);
  dscores.fill_bytes(0xff, stream);
  cuda::page_select(a, stream);
  if (stream != nullptr) {
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaStreamDestroy(stream));
  }
  for (const uint32_t v : drow_ready.download()) EXPECT_EQ(v, 0u) << "row_ready not left zero";
  r.gpu_scores = dscores.download();
  r.gpu_scores.resize(size_t(total_pages));
  r.selected_pages = dsel_pages.download();
  r.selected_blocks = dsel_blocks.download();
  r.selected_pos0 = dsel_pos0.download();
  r.selected_len = dsel_len.download();
  r.selected_pages.resize(size_t(total_selected));
  r.selected_blocks.resize(size_t(total_selected));
  r.selected_pos0.resize(size_t(total_selected));
  r.selected_len.resize(size_t(total_selected));
  if (!c.with_blocks) {  // untouched (poisoned) buffer; the blocks are the positions / P
    for (int32_t& b : r.selected_blocks) EXPECT_EQ(b, -1) << "selected_blocks written though null";
    for (size_t j = 0; j < r.selected_blocks.size(); ++j) r.selected_blocks[j] = r.selected_pos0[j] / P;
  }

  // CPU scores on the same (bf16-rounded) query values.
  for (int32_t row = 0; row < rows; ++row) {
    const float* qr = q.f.data() + q_offset[size_t(row)];
    const int32_t len = c.seq_lens[size_t(row)];
    for (int32_t b = 0; b < r.page_indptr[size_t(row) + 1] - r.page_indptr[size_t(row)]; ++b) {
      const int32_t page = r.page_indices[size_t(r.page_indptr[size_t(row)] + b)];
      const int32_t tokens = std::min(P, len - b * P);
      const int32_t valid = (tokens + LP - 1) / LP;
      const float* mn = kmin.data() + size_t(page) * SP * D;
      const float* mx = kmax.data() + size_t(page) * SP * D;
      r.cpu_scores.push_back(cpu::page_score(qr, D, c.group, mn, mx, valid, D));
      float scale = 0.0f;
      for (int32_t s = 0; s < valid; ++s) {
        for (int32_t g = 0; g < c.group; ++g) {
          float t = 0.0f;
          for (int32_t d = 0; d < D; ++d) {
            t += std::max(std::fabs(qr[g * D + d] * mn[s * D + d]), std::fabs(qr[g * D + d] * mx[s * D + d]));
          }
          scale = std::max(scale, t);
        }
      }
      r.score_scale.push_back(scale);
    }
  }
  return r;
}

std::string describe(const SelectCase& c) {
  return "P " + std::to_string(c.config.page_tokens) + " LP " + std::to_string(c.config.logical_page_tokens) +
         " sink " + std::to_string(c.config.sink_tokens) + " budget " + std::to_string(c.config.token_budget) +
         " D " + std::to_string(c.head_dim) + " group " + std::to_string(c.group) +
         (c.with_blocks ? "" : " (no selected_blocks)") + (c.late_q ? " (late q)" : "") +
         (c.pdl ? "" : " (no programmatic launch)");
}

std::vector<SelectCase> sweep(std::mt19937_64& rng, bool long_rows) {
  std::vector<SelectCase> cases;
  // (P, LP): 1, 2, 4, 8 and 16 sub-pages per page.
  const std::pair<int32_t, int32_t> pages[] = {{64, 16}, {16, 16}, {32, 8}, {32, 16}, {64, 8}, {128, 8}};
  const std::pair<int64_t, int64_t> sink_budget[] = {{64, 1024}, {0, 512}, {100, 4096}, {1, 64}, {64, 0}};
  const int32_t groups[] = {1, 2, 4, 7, 8, 12, 16};
  int i = 0;
  for (const auto& [P, LP] : pages) {
    for (const auto& [sink, budget] : sink_budget) {
      SelectCase c;
      c.config = {P, LP, sink, budget};
      c.head_dim = (i % 2 == 0) ? 128 : 64;
      c.group = groups[size_t(i) % 7];
      c.with_blocks = (i / 2) % 2 == 0;
      c.late_q = i % 3 == 0;
      c.pdl = i % 5 != 4;
      ++i;
      c.seq_lens = {1, P - 1, P, P + 1, 3 * P, 1000, 2500};
      std::uniform_int_distribution<int32_t> len(1, long_rows ? 20000 : 6000);
      for (int k = 0; k < 6; ++k) c.seq_lens.push_back(len(rng));
      if (long_rows) c.seq_lens.push_back(131072);
      cases.push_back(c);
    }
  }
  return cases;
}

// The selection must equal select_pages(scores) row by row, as physical pages and block indices.
void expect_selection(const SelectCase& c, const SelectResult& r, const std::vector<float>& scores,
                      std::vector<int32_t>* mismatched_rows) {
  for (size_t row = 0; row < c.seq_lens.size(); ++row) {
    const int32_t first = r.page_indptr[row], n = r.page_indptr[row + 1] - first;
    const std::vector<int32_t> want = cpu::select_pages(std::span(scores).subspan(size_t(first), size_t(n)),
                                                        c.seq_lens[row], c.config.page_tokens, c.config.sink_tokens,
                                                        c.config.token_budget);
    const int32_t s0 = r.selected_indptr[row], s1 = r.selected_indptr[row + 1];
    ASSERT_EQ(int32_t(want.size()), s1 - s0) << "plan size, row " << row;
    std::vector<int32_t> got_blocks(r.selected_blocks.begin() + s0, r.selected_blocks.begin() + s1);
    if (got_blocks != want) {
      if (mismatched_rows) {
        mismatched_rows->push_back(int32_t(row));
        continue;
      }
      ADD_FAILURE() << "row " << row << " (seq_len " << c.seq_lens[row] << "): selected blocks differ";
    }
    for (int32_t j = s0; j < s1; ++j) {
      const int32_t b = r.selected_blocks[size_t(j)];
      ASSERT_TRUE(b >= 0 && b < n) << "row " << row << " entry " << j;
      EXPECT_EQ(r.selected_pages[size_t(j)], r.page_indices[size_t(first + b)]);
      EXPECT_EQ(r.selected_pos0[size_t(j)], b * c.config.page_tokens) << "row " << row << " entry " << j;
      EXPECT_EQ(r.selected_len[size_t(j)], std::min(c.config.page_tokens, c.seq_lens[row] - b * c.config.page_tokens))
          << "row " << row << " entry " << j;
    }
  }
}

TEST(PageSelectTest, SmallExactScoresMatchCpuIncludingTies) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (const SelectCase& c : sweep(rng, false)) {
    SCOPED_TRACE(describe(c));
    const SelectResult r = run_case(c, /*exact=*/true, rng);
    ASSERT_EQ(r.gpu_scores, r.cpu_scores);
    expect_selection(c, r, r.cpu_scores, nullptr);
  }
}

TEST(PageSelectTest, RandomScoresMatchCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  size_t rows = 0, near_ties = 0;
  for (const SelectCase& c : sweep(rng, true)) {
    SCOPED_TRACE(describe(c));
    const SelectResult r = run_case(c, /*exact=*/false, rng);
    // Scores: fp32 sums in another order, error ≤ a few ulp of the sum of magnitudes.
    std::vector<float> tol(r.score_scale.size());
    for (size_t i = 0; i < tol.size(); ++i) tol[i] = 1e-5f * r.score_scale[i] + 1e-6f;
    for (size_t i = 0; i < r.gpu_scores.size(); ++i) {
      ASSERT_LE(std::fabs(r.gpu_scores[i] - r.cpu_scores[i]), tol[i]) << "page entry " << i;
    }
    // The selection logic itself is exact: on the GPU's scores the CPU twin picks the same pages.
    expect_selection(c, r, r.gpu_scores, nullptr);
    // On the CPU's scores it may differ only in rows whose selection boundary is within tolerance.
    std::vector<int32_t> mismatched;
    expect_selection(c, r, r.cpu_scores, &mismatched);
    for (int32_t row : mismatched) {
      // A row may differ only if the CPU selection's own boundary (lowest selected vs highest
      // unselected candidate score) is within the score tolerance: otherwise the GPU's scores,
      // each within tolerance, would order the boundary the same way.
      const int32_t first = r.page_indptr[size_t(row)], n = r.page_indptr[size_t(row) + 1] - first;
      const std::vector<int32_t> want =
          cpu::select_pages(std::span(r.cpu_scores).subspan(size_t(first), size_t(n)), c.seq_lens[size_t(row)],
                            c.config.page_tokens, c.config.sink_tokens, c.config.token_budget);
      std::vector<uint8_t> sel(size_t(n), 0);
      for (int32_t b : want) sel[size_t(b)] = 1;
      const int32_t sink_blocks = int32_t(std::min<int64_t>(
          (c.config.sink_tokens + c.config.page_tokens - 1) / c.config.page_tokens, n));
      float lowest_in = INFINITY, highest_out = -INFINITY, t = 0.0f;
      for (int32_t b = sink_blocks; b < n - 1; ++b) {
        const float s = r.cpu_scores[size_t(first + b)];
        t = std::max(t, 2.0f * tol[size_t(first + b)]);
        if (sel[size_t(b)]) {
          lowest_in = std::min(lowest_in, s);
        } else {
          highest_out = std::max(highest_out, s);
        }
      }
      EXPECT_LE(lowest_in - highest_out, t) << "row " << row << " differs though its boundary is well separated";
    }
    rows += c.seq_lens.size();
    near_ties += mismatched.size();
  }
  EXPECT_LE(near_ties * 20, rows) << "near-ties in " << near_ties << " of " << rows << " rows: inputs too clustered";
}

TEST(PageSelectTest, ManyBlocksBeyondSharedStaging) {
  // Rows of 8192 blocks (the most the select kernel stages in shared memory) and more (its global
  // memory path), with exact tie-heavy scores and with random ones.
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (const bool exact : {true, false}) {
    SelectCase c;
    c.config = {16, 16, 64, 16 * 3000};
    c.head_dim = exact ? 64 : 128;
    c.group = exact ? 4 : 16;
    c.seq_lens = {8192 * 16, 8192 * 16 + 1, 8193 * 16, 20000 * 16 - 3, 5000};
    c.with_blocks = exact;
    SCOPED_TRACE(describe(c) + (exact ? " exact" : " random"));
    const SelectResult r = run_case(c, exact, rng);
    if (exact) {
      ASSERT_EQ(r.gpu_scores, r.cpu_scores);
    } else {
      for (size_t i = 0; i < r.gpu_scores.size(); ++i) {
        ASSERT_LE(std::fabs(r.gpu_scores[i] - r.cpu_scores[i]), 1e-5f * r.score_scale[i] + 1e-6f) << "page entry " << i;
      }
    }
    expect_selection(c, r, r.gpu_scores, nullptr);
  }
}

TEST(PageSelectTest, ShapeCheckNamesCaller) {
  cuda::PageSelectArgs a;
  a.config = {64, 16, 64, 1024};
  a.rows = 1;
  a.head_dim = 128;
  a.group = 17;  // above kPageSelectMaxGroup
  const auto expect_rejected = [](const cuda::PageSelectArgs& bad) {
    try {
      cuda::page_select(bad, nullptr);
      FAIL() << "no exception";
    } catch (const InternalError& e) {
      EXPECT_NE(std::string(e.what()).find("page_select_test.cu"), std::string::npos) << e.what();
    }
  };
  expect_rejected(a);
  a.group = 4;
  a.head_dim = 96;  // only 64 and 128
  expect_rejected(a);
  a.head_dim = 128;
  a.config = {48, 16, 64, 1024};  // 3 sub-pages per page: not a power of two
  expect_rejected(a);
}

}  // namespace
}  // namespace sparseserve::gpu_test
