// Paged decode attention (kernels/cuda/decode_attention.h) as it is launched: programmatic launch
// after a late producer and back to back, the early K/V copies of rows whose page lists are
// plan-time (DecodeRow::pages_plan_time) and their contract, the decode right after page_select,
// and CUDA graph replay after a new plan.
// Outputs are poisoned (NaN) before every run; skipped where no CUDA device exists.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "decode_problem.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/page_select.h"
#include "late_copy.cuh"

namespace sparseserve::kernels::cuda {
namespace {

using namespace decode_test;

// A decode step's late producer, as the step's append and the projections before it: q and the K/V
// of the pool's pages from `top` on (every row's last list entry, after last_entries_to_top) are
// poisoned, and o too, then written back by a kernel that lets the next one start at once and writes
// ~200 us later (behind a held stream). A consumer that read them before its programmatic wait would
// see NaN.
struct LateProducer {
  DeviceBuffer<bf16> q, k, v;  // the true values
  size_t off = 0;              // elements before page `top`
  size_t bytes = 0;            // bytes of the pages from `top` on, in k and in v

  LateProducer(const DecodeProblem& pr, int32_t top)
      : q(std::span<const uint16_t>(pr.q.bits)),
        k(std::span<const uint16_t>(pr.k.bits)),
        v(std::span<const uint16_t>(pr.v.bits)),
        off(static_cast<size_t>(top) * pr.P * pr.D),
        bytes(static_cast<size_t>(pr.num_pages - top) * pr.P * pr.D * sizeof(bf16)) {}

  void run(DeviceProblem& dp, cudaStream_t stream) const {
    dp.q.fill_bytes(0xff, stream);
    CUDA_CHECK(cudaMemsetAsync(dp.k.data() + off, 0xff, bytes, stream));
    CUDA_CHECK(cudaMemsetAsync(dp.v.data() + off, 0xff, bytes, stream));
    dp.o.fill_bytes(0xff, stream);
    gpu_test::hold_stream(stream);
    gpu_test::late_copy({{q.data(), dp.q.data(), q.bytes()},
                         {k.data() + off, dp.k.data() + off, bytes},
                         {v.data() + off, dp.v.data() + off, bytes}},
                        stream);
  }
};

// Programmatic launch (the default): run() waits for the kernel before it. A producer that lets it
// start at once and writes q late must not be overtaken, and a second run straight after the first
// (same plan, same partial buffers, other q and o) must not disturb the first's merge. Small: also
// run under the sanitizers.
TEST(DecodeAttentionGpu, SmallProgrammaticLaunchWaitsForThePreviousKernel) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(41);
  const DecodeProblem pr = make_problem(128, 64, 4, 2, 3, 3000, {RowKind::kAll, RowKind::kSelected, RowKind::kStreaming},
                                        rng, 1500);
  DecodeProblem pr2 = pr;
  pr2.q = random_bf16(pr.q.bits.size(), 1.0f, rng);
  const auto rows = static_cast<int32_t>(pr.rows.size());
  DeviceProblem dp(pr);
  const DeviceBuffer<bf16> q_late{std::span<const uint16_t>(pr.q.bits)}, q2{std::span<const uint16_t>(pr2.q.bits)};
  DeviceBuffer<bf16> o2(dp.o.size());
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  // Every long row split: the global merge runs (many pieces a row, no clusters), then one or two
  // pieces a row (clusters of two; rows after an unsplit one straddle two clusters).
  for (const int32_t target : {0, 2 * rows - 1}) {
    DecodeConfig cfg{.head_dim = 128, .group = 4, .page_tokens = 64, .max_rows = rows, .min_chunk_tokens = 64,
                     .target_ctas = target};
    ASSERT_TRUE(cfg.programmatic_launch);
    DecodeAttention attn(cfg);
    attn.plan(pr.rows, dp.row_pages, stream);
    ASSERT_GT(attn.split().num_partials, 0);
    ASSERT_EQ(attn.launch_cluster(), target == 0 ? 1 : 2);
    ASSERT_TRUE(attn.launch_programmatic());  // short pieces: programmatic in clusters too
    for (int rep = 0; rep < 3; ++rep) {
      dp.q.fill_bytes(0xff, stream);
      dp.o.fill_bytes(0xff, stream);
      o2.fill_bytes(0xff, stream);
      gpu_test::late_copy(q_late.data(), dp.q.data(), q_late.bytes(), stream);
      attn.run(dp.args(pr), stream);
      DecodeArgs a2 = dp.args(pr);
      a2.q = q2.data();
      a2.o = o2.data();
      attn.run(a2, stream);
      CUDA_CHECK(cudaStreamSynchronize(stream));
      expect_close(dp.o.download<uint16_t>(), reference(pr), 128, "after the late producer");
      expect_close(o2.download<uint16_t>(), reference(pr2), 128, "second run");
    }
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
}

// DecodeRow::pages_plan_time: the kernel copies the row's K/V before waiting for the previous
// kernel, but never from the row's last list entry. Here the previous kernel writes q and the K/V of every row's
// last entry late (both poisoned before), as a decode step's append writes the newest key; the
// output must be exact, with rows split into many pieces (global merge) and into two (clusters), and
// with several entries per tile (P = 16). Small: the GPU suite runs it under the sanitizers.
TEST(DecodeAttentionGpu, SmallEarlyCopiesSkipEachRowsLastEntry) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(43);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  for (const int32_t P : {16, 64}) {
    DecodeProblem pr = make_problem(128, P, 4, 2, 3, 3000, {RowKind::kAll, RowKind::kSelected, RowKind::kStreaming},
                                    rng, 1500);
    for (DecodeRow& r : pr.rows) r.pages_plan_time = true;
    const int32_t top = last_entries_to_top(pr);
    const auto rows = static_cast<int32_t>(pr.rows.size());
    DeviceProblem dp(pr);
    const LateProducer late(pr, top);
    for (const int32_t target : {0, 2 * rows - 1}) {
      DecodeConfig cfg{.head_dim = 128, .group = 4, .page_tokens = P, .max_rows = rows, .min_chunk_tokens = 64,
                       .target_ctas = target};
      DecodeAttention attn(cfg);
      attn.plan(pr.rows, dp.row_pages, stream);
      const DecodeArgs args = dp.args(pr);
      for (int rep = 0; rep < 2; ++rep) {
        late.run(dp, stream);
        attn.run(args, stream);
        CUDA_CHECK(cudaStreamSynchronize(stream));
        const std::string what = "P=" + std::to_string(P) + " target=" + std::to_string(target);
        expect_close(dp.o.download<uint16_t>(), reference(pr), 128, what.c_str());
      }
    }
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
}

// The other side of the contract, row by row: a row without pages_plan_time reads no K/V before the
// previous kernel completes (a late producer rewriting the whole pool leaves its output exact), and
// a row with it does copy early (on compute capability 9.0+, where launches overlap: the same late
// pool then reaches its output as NaN). The latter is a timing check (the producer waits 200 us
// before writing, the early copies are issued at launch), so the sanitizers do not run it.
TEST(DecodeAttentionGpu, EarlyCopiesOnlyForRowsThatAllowThem) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(47);
  DecodeProblem pr = make_problem(128, 64, 4, 2, 2, 3000, {RowKind::kAll}, rng, 2000);
  for (size_t r = 0; r < pr.rows.size(); ++r) pr.rows[r].pages_plan_time = r % 2 == 1;
  const auto rows = static_cast<int32_t>(pr.rows.size());
  DeviceProblem dp(pr);
  const DeviceBuffer<bf16> k_late{std::span<const uint16_t>(pr.k.bits)}, v_late{std::span<const uint16_t>(pr.v.bits)};
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  DecodeConfig cfg{.head_dim = 128, .group = 4, .page_tokens = 64, .max_rows = rows, .min_chunk_tokens = 64};
  DecodeAttention attn(cfg);
  attn.plan(pr.rows, dp.row_pages, stream);
  dp.k.fill_bytes(0xff, stream);
  dp.v.fill_bytes(0xff, stream);
  dp.o.fill_bytes(0xff, stream);
  gpu_test::hold_stream(stream);
  gpu_test::late_copy({{k_late.data(), dp.k.data(), k_late.bytes()}, {v_late.data(), dp.v.data(), v_late.bytes()}},
                      stream);
  attn.run(dp.args(pr), stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CUDA_CHECK(cudaStreamDestroy(stream));
  int dev = 0, major = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  const std::vector<uint16_t> got = dp.o.download<uint16_t>();
  const std::vector<float> ref = reference(pr);
  const size_t per_row = static_cast<size_t>(pr.group) * pr.D;  // a row's output: its group's heads
  for (size_t r = 0; r < pr.rows.size(); ++r) {
    const DecodeRow& row = pr.rows[r];
    const size_t head0 = static_cast<size_t>(row.q_row) * pr.n_q_heads() + static_cast<size_t>(row.kv_head) * pr.group;
    const size_t at = head0 * pr.D;
    const std::vector<uint16_t> got_row(got.begin() + static_cast<std::ptrdiff_t>(at),
                                        got.begin() + static_cast<std::ptrdiff_t>(at + per_row));
    if (!row.pages_plan_time) {
      const std::vector<float> ref_row(ref.begin() + static_cast<std::ptrdiff_t>(at),
                                       ref.begin() + static_cast<std::ptrdiff_t>(at + per_row));
      expect_close(got_row, ref_row, pr.D, ("row " + std::to_string(r) + " without early copies").c_str());
    } else if (major >= 9) {
      const auto nan =
          std::count_if(got_row.begin(), got_row.end(), [](uint16_t b) { return !std::isfinite(bf16_to_f32(b)); });
      EXPECT_GT(nan, 0) << "row " << r << ": early copies should have read the pool before the late producer wrote it";
    }
  }
}

// A sparse layer's decode step, every launch programmatic: a late producer writes q and the newest
// K/V of every row (both poisoned before), page_select picks the retrieval rows' pages (its
// selecting kernel lets the decode in before it writes them), and the decode reads them, its
// streaming rows (plan-time lists) copying early. The output must equal the CPU twin over the
// streaming rows' lists and the pages page_select chose. Small: the GPU suite runs it under the
// sanitizers.
TEST(DecodeAttentionGpu, SmallDecodeAfterPageSelectReadsTheSelection) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(53);
  const int32_t D = 128, P = 64, LP = 16, group = 4;
  DecodeProblem pr = make_problem(D, P, group, 4, 3, 6000, {RowKind::kAll, RowKind::kStreaming}, rng, 2000);
  // Retrieval rows (every block listed, for page_select) first, streaming rows after.
  std::vector<size_t> order(pr.rows.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_partition(order.begin(), order.end(), [&](size_t r) { return pr.rows[r].mask == MaskKind::kCausal; });
  const auto n_ret = static_cast<int32_t>(
      std::count_if(pr.rows.begin(), pr.rows.end(), [](const DecodeRow& r) { return r.mask == MaskKind::kCausal; }));
  ASSERT_GT(n_ret, 0);
  ASSERT_LT(n_ret, static_cast<int32_t>(pr.rows.size()));
  {
    std::vector<DecodeRow> rows;
    std::vector<RowPages> pages;
    for (const size_t r : order) rows.push_back(pr.rows[r]), pages.push_back(pr.pages[r]);
    pr.rows = std::move(rows);
    pr.pages = std::move(pages);
  }
  for (DecodeRow& r : pr.rows) r.pages_plan_time = r.mask == MaskKind::kBand;
  const int32_t top = last_entries_to_top(pr);
  const auto rows = static_cast<int32_t>(pr.rows.size());

  // page_select's inputs: the retrieval rows' full lists, their queries, random sub-page bounds.
  const PageSelectConfig sel{P, LP, 100, 1024};
  std::vector<RowPages> full(pr.pages.begin(), pr.pages.begin() + n_ret);
  const HostPageLists all(full);
  std::vector<int32_t> seq_lens;
  std::vector<int64_t> q_offset;
  int32_t max_blocks = 0;
  for (int32_t r = 0; r < n_ret; ++r) {
    const DecodeRow& row = pr.rows[static_cast<size_t>(r)];
    seq_lens.push_back(row.q_pos + 1);
    q_offset.push_back(row.q_row * pr.q_stride + int64_t{row.kv_head} * group * D);
    max_blocks = std::max(max_blocks, all.indptr[static_cast<size_t>(r) + 1] - all.indptr[static_cast<size_t>(r)]);
  }
  const std::vector<int32_t> sel_indptr = plan_selected_indptr(seq_lens, sel);
  const int32_t n_sel = sel_indptr.back();
  Bf16Array kmin = random_bf16(static_cast<size_t>(pr.num_pages) * (P / LP) * D, 1.0f, rng), kmax = kmin;
  for (size_t i = 0; i < kmax.bits.size(); ++i) kmax.set(i, kmin.f[i] + 0.5f);

  // The decode list: the selection (written by page_select), then the streaming rows' lists.
  const std::vector<RowPages> streaming(pr.pages.begin() + n_ret, pr.pages.end());
  const HostPageLists str(streaming);
  std::vector<int32_t> indptr = sel_indptr, row_pages;
  for (size_t i = 1; i < str.indptr.size(); ++i) indptr.push_back(n_sel + str.indptr[i]);
  for (int32_t r = 0; r < rows; ++r) row_pages.push_back(indptr[static_cast<size_t>(r) + 1] - indptr[static_cast<size_t>(r)]);
  DeviceProblem dp(pr, static_cast<size_t>(indptr.back()), static_cast<size_t>(rows));
  dp.indptr.upload(indptr);
  CUDA_CHECK(cudaMemcpy(dp.ids.data() + n_sel, str.ids.data(), str.ids.size() * 4, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dp.pos0.data() + n_sel, str.pos0.data(), str.pos0.size() * 4, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(dp.len.data() + n_sel, str.len.data(), str.len.size() * 4, cudaMemcpyHostToDevice));
  const DeviceBuffer<int32_t> d_all_indptr{std::span<const int32_t>(all.indptr)}, d_all_ids{std::span<const int32_t>(all.ids)},
      d_seq{std::span<const int32_t>(seq_lens)}, d_sel_indptr{std::span<const int32_t>(sel_indptr)};
  const DeviceBuffer<int64_t> d_q_offset{std::span<const int64_t>(q_offset)};
  const DeviceBuffer<bf16> d_kmin{std::span<const uint16_t>(kmin.bits)}, d_kmax{std::span<const uint16_t>(kmax.bits)};
  DeviceBuffer<float> scores(all.ids.size());
  DeviceBuffer<uint32_t> row_ready{std::span<const uint32_t>(std::vector<uint32_t>(static_cast<size_t>(n_ret), 0u))};
  PageSelectArgs sa;
  sa.config = sel;
  sa.rows = n_ret;
  sa.head_dim = D;
  sa.group = group;
  sa.max_blocks = max_blocks;
  sa.q = dp.q.data();
  sa.q_offset = d_q_offset.data();
  sa.kmin = d_kmin.data();
  sa.kmax = d_kmax.data();
  sa.page_indptr = d_all_indptr.data();
  sa.page_indices = d_all_ids.data();
  sa.seq_lens = d_seq.data();
  sa.scores = scores.data();
  sa.selected_indptr = d_sel_indptr.data();
  sa.selected_pages = dp.ids.data();
  sa.selected_pos0 = dp.pos0.data();
  sa.selected_len = dp.len.data();
  sa.row_ready = row_ready.data();

  const LateProducer late(pr, top);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  for (const int32_t target : {0, 2 * rows - 1}) {  // many pieces a row (global merge), then clusters of two
    DecodeConfig cfg{.head_dim = D, .group = group, .page_tokens = P, .max_rows = rows, .min_chunk_tokens = 64,
                     .target_ctas = target};
    DecodeAttention attn(cfg);
    attn.plan(pr.rows, row_pages, stream);
    for (DeviceBuffer<int32_t>* sel_out : {&dp.ids, &dp.pos0, &dp.len}) {  // page_select's part of the list
      CUDA_CHECK(cudaMemsetAsync(sel_out->data(), 0xff, static_cast<size_t>(n_sel) * 4, stream));
    }
    late.run(dp, stream);
    page_select(sa, stream);
    attn.run(dp.args(pr), stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    // The reference reads the pages page_select chose for the retrieval rows.
    DecodeProblem chosen = pr;
    const std::vector<int32_t> ids = dp.ids.download(), pos0 = dp.pos0.download(), len = dp.len.download();
    for (int32_t r = 0; r < n_ret; ++r) {
      RowPages& rp = chosen.pages[static_cast<size_t>(r)];
      rp = RowPages{};
      for (int32_t e = indptr[static_cast<size_t>(r)]; e < indptr[static_cast<size_t>(r) + 1]; ++e) {
        ASSERT_TRUE(ids[static_cast<size_t>(e)] >= 0 && ids[static_cast<size_t>(e)] < pr.num_pages) << "entry " << e;
        rp.ids.push_back(ids[static_cast<size_t>(e)]);
        rp.pos0.push_back(pos0[static_cast<size_t>(e)]);
        rp.len.push_back(len[static_cast<size_t>(e)]);
      }
      ASSERT_LT(rp.ids.size(), full[static_cast<size_t>(r)].ids.size()) << "row " << r << ": nothing left out";
    }
    const std::string what = "target=" + std::to_string(target) + ", pieces " + std::to_string(attn.split().work.size());
    expect_close(dp.o.download<uint16_t>(), reference(chosen), D, what.c_str());
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
}

// A graph captured once stays valid when later plans change the rows, lengths and split: short rows
// (at most two pieces each, so the captured launch is in clusters of two) then long rows split into
// many pieces, and the other way round.
TEST(DecodeAttentionGpu, CudaGraphReplayAfterReplan) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(77);
  const int32_t D = 128, P = 64, group = 4, heads = 2, batch = 4;
  // Fixed device buffers sized for the largest problem.
  const int32_t max_len = 6000, pool_pages = batch * heads * ((max_len + P - 1) / P + 16) + 16;
  DeviceBuffer<bf16> k(static_cast<size_t>(pool_pages) * P * D), v(k.size()), q(static_cast<size_t>(batch) * heads * group * D + 16),
      o(static_cast<size_t>(batch) * heads * group * D);
  const size_t list_cap = static_cast<size_t>(pool_pages);
  DeviceBuffer<int32_t> indptr(batch * heads + 1), ids(list_cap), pos0(list_cap), len(list_cap);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  for (const bool short_first : {true, false}) {
    DecodeConfig cfg{.head_dim = D, .group = group, .page_tokens = P, .max_rows = batch * heads, .cuda_graph = true,
                     .min_chunk_tokens = 64};
    DecodeAttention attn(cfg);
    cudaGraphExec_t exec = nullptr;
    for (int step = 0; step < 3; ++step) {
      const bool is_short = (step % 2 == 0) == short_first;
      DecodeProblem pr = make_problem(D, P, group, heads, batch, is_short ? 128 : max_len,
                                      {RowKind::kAll, RowKind::kSelected, RowKind::kStreaming}, rng,
                                      is_short ? 1 : max_len / 2);
      pr.q_stride = int64_t{heads} * group * D;
      pr.q = random_bf16(static_cast<size_t>(batch) * pr.q_stride, 1.0f, rng);
      ASSERT_LE(pr.num_pages, pool_pages);
      DeviceProblem staging(pr);
      CUDA_CHECK(cudaMemcpy(k.data(), staging.k.data(), staging.k.bytes(), cudaMemcpyDeviceToDevice));
      CUDA_CHECK(cudaMemcpy(v.data(), staging.v.data(), staging.v.bytes(), cudaMemcpyDeviceToDevice));
      CUDA_CHECK(cudaMemcpy(q.data(), staging.q.data(), staging.q.bytes(), cudaMemcpyDeviceToDevice));
      CUDA_CHECK(cudaMemcpy(indptr.data(), staging.indptr.data(), sizeof(int32_t) * (batch * heads + 1),
                            cudaMemcpyDeviceToDevice));
      CUDA_CHECK(cudaMemcpy(ids.data(), staging.ids.data(), staging.ids.bytes(), cudaMemcpyDeviceToDevice));
      CUDA_CHECK(cudaMemcpy(pos0.data(), staging.pos0.data(), staging.pos0.bytes(), cudaMemcpyDeviceToDevice));
      CUDA_CHECK(cudaMemcpy(len.data(), staging.len.data(), staging.len.bytes(), cudaMemcpyDeviceToDevice));
      DecodeArgs a;
      a.q = q.data();
      a.q_stride = pr.q_stride;
      a.o = o.data();
      a.o_stride = int64_t{heads} * group * D;
      a.kv = {k.data(), v.data(), pool_pages, P, D};
      a.pages = {indptr.data(), ids.data(), pos0.data(), len.data()};
      a.scale = pr.scale;
      attn.plan(pr.rows, staging.row_pages, stream);
      const std::string what = std::string(short_first ? "short first" : "long first") + ", graph step " +
                               std::to_string(step) + ", pieces " + std::to_string(attn.split().work.size());
      EXPECT_EQ(attn.launch_cluster(), is_short ? 2 : 1) << what;
      if (exec == nullptr) {
        cudaGraph_t graph;
        CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        attn.run(a, stream);
        CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
        CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        CUDA_CHECK(cudaGraphDestroy(graph));
      }
      o.fill_bytes(0xff, stream);
      CUDA_CHECK(cudaGraphLaunch(exec, stream));
      CUDA_CHECK(cudaStreamSynchronize(stream));
      expect_close(o.download<uint16_t>(), reference(pr), D, what.c_str());
    }
    CUDA_CHECK(cudaGraphExecDestroy(exec));
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace sparseserve::kernels::cuda
