// Paged decode attention (kernels/cuda/decode_attention.h) against its CPU twin
// (kernels/cpu/span_attention.h attend_spans) on fresh random bf16 inputs: retrieval rows over all
// pages, selected page subsets, streaming rows over sink + ring pages (token-exact Λ, sink not a
// multiple of the page), empty rows; split-KV with the merge and in thread block clusters. The
// launch tests (programmatic launch, early copies, graph replay) are in decode_launch_test.cu.
// Outputs are poisoned (NaN) before every run. Skipped where no CUDA device exists. The work split's
// own tests are host-only: tests/kernels/attention_plan_test.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "decode_problem.h"
#include "kernels/cuda/decode_attention.h"

namespace sparseserve::kernels::cuda {
namespace {

using namespace decode_test;

// ---- against the CPU twin ------------------------------------------------------------------------

// Every page size, both head dims, groups up to 16, with and without the split-row merge, on pools
// whose empty slots hold NaN, with early copies on some rows.
TEST(DecodeAttentionGpu, MatchesCpuTwinOverShapes) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(1234);
  const std::vector<RowKind> kinds = {RowKind::kAll, RowKind::kSelected, RowKind::kStreaming};
  for (const int32_t D : {64, 128}) {
    for (const int32_t P : {16, 32, 64, 128}) {
      for (const int32_t group : {1, 2, 3, 4, 8, 12, 16}) {
        for (int rep = 0; rep < 2; ++rep) {
          const int32_t batch = rand_int(rng, 1, 8), heads = rand_int(rng, 1, 4);
          DecodeProblem pr = make_problem(D, P, group, heads, batch, 1500, kinds, rng);
          poison_empty_slots(pr);
          // Early copies on some rows (nothing else writes the lists or the pool here).
          for (DecodeRow& r : pr.rows) r.pages_plan_time = rand_int(rng, 0, 1) == 1;
          // rep 0: many pieces, exercising the merge.
          DecodeConfig cfg{.head_dim = D, .group = group, .page_tokens = P, .max_rows = batch * heads,
                           .min_chunk_tokens = rep == 0 ? 16 : 256, .target_ctas = rep == 0 ? 97 : 0};
          DecodeAttention attn(cfg);
          DeviceProblem dp(pr);
          const auto got = run_decode(attn, pr, dp);
          const std::string what = "D=" + std::to_string(D) + " P=" + std::to_string(P) + " group=" +
                                   std::to_string(group) + " batch=" + std::to_string(batch) + " rep=" +
                                   std::to_string(rep) + " pieces=" + std::to_string(attn.split().work.size());
          expect_close(got, reference(pr), D, what.c_str());
        }
      }
    }
  }
}

// Rows split into more pieces than the merge stages in shared memory at once (it then merges in
// chunks: at most 10-47 pieces a chunk for groups 16, 5 and 4), with groups that give a thread
// several output slots (16), one slot (5; 4 at D = 128) or a share of one (4 at D = 64, 1). Small:
// the GPU suite runs it under the sanitizers.
TEST(DecodeAttentionGpu, SmallMergeOfMorePiecesThanOneChunk) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(2024);
  for (const int32_t D : {64, 128}) {
    for (const int32_t group : {16, 5, 4, 1}) {
      const DecodeProblem pr = make_problem(D, 16, group, 1, 2, 2500, {RowKind::kAll}, rng, 2000);
      DecodeConfig cfg{.head_dim = D, .group = group, .page_tokens = 16, .max_rows = 2, .min_chunk_tokens = 16,
                       .target_ctas = 200, .cluster_ctas = 1};  // every piece a partial of the global merge
      DecodeAttention attn(cfg);
      DeviceProblem dp(pr);
      const auto got = run_decode(attn, pr, dp);
      int32_t most = 0;
      for (const int32_t n : attn.split().row_splits) most = std::max(most, n);
      ASSERT_GT(most, 47) << "rows must be split into more pieces than one chunk holds (groups 16, 5 and 4)";
      const std::string what = "D=" + std::to_string(D) + " group=" + std::to_string(group) + " pieces/row=" +
                               std::to_string(most);
      expect_close(got, reference(pr), D, what.c_str());
    }
  }
}

// Thread block clusters of 2, 4 and 8 CTAs (and none). A plan launches in clusters when no row has
// more pieces than a cluster holds, so each case takes the largest target_ctas whose split keeps to
// that: rows of several pieces then start anywhere in a cluster, giving segments of every length,
// rows inside one cluster (no global merge), rows across two (a global merge of two partials),
// unsplit and empty rows sharing clusters with split ones, and (capacity grids) surplus CTAs in the
// last cluster. Small: the GPU suite runs it under the sanitizers.
// Which cluster cases a split laid out in clusters of C produced (CTA i is work item i).
struct ClusterCoverage {
  bool inside = false;        // a split row inside one cluster
  bool across = false;        // a split row across cluster boundaries
  bool long_segment = false;  // three or more pieces of a row in one cluster
  bool mixed = false;         // a cluster holding an unsplit row's CTA and a split row's
  bool surplus = false;       // surplus CTAs of the grid in a cluster with working ones
  void note(const DecodeSplit& s, int32_t C, int32_t grid) {
    const auto work = static_cast<int32_t>(s.work.size());
    for (int32_t base = 0; base < work; base += C) {
      bool split_here = false, unsplit_here = false;
      for (int32_t i = base; i < std::min(work, base + C); ++i) {
        const bool split = s.row_splits[static_cast<size_t>(s.work[static_cast<size_t>(i)].row)] > 1;
        (split ? split_here : unsplit_here) = true;
        const auto row_of = [&](int32_t k) { return s.work[static_cast<size_t>(k)].row; };
        long_segment = long_segment || (split && i - 2 >= base && row_of(i - 2) == row_of(i));
      }
      mixed = mixed || (split_here && unsplit_here);
    }
    int32_t f = 0;  // the row's first CTA
    for (const int32_t n : s.row_splits) {
      if (n > 1) (f / C == (f + n - 1) / C ? inside : across) = true;
      f += n;
    }
    surplus = surplus || (grid > work && work % C != 0);
  }
};

TEST(DecodeAttentionGpu, SmallClusterSegmentsMatchCpuTwin) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(31337);
  const std::vector<RowKind> kinds = {RowKind::kAll, RowKind::kSelected, RowKind::kStreaming, RowKind::kEmpty};
  for (const int32_t cluster : {1, 2, 4, 8}) {
    ClusterCoverage cov;
    for (const int32_t D : {64, 128}) {
      for (const int32_t group : {1, 4, 16}) {
        const int32_t batch = rand_int(rng, 2, 6), heads = rand_int(rng, 1, 3), rows = batch * heads;
        const DecodeProblem pr = make_problem(D, 16, group, heads, batch, 1200, kinds, rng, 200);
        DeviceProblem dp(pr);
        int32_t target = rows * std::max(cluster, 2);
        for (; target > rows; --target) {
          const DecodeSplit s = plan_decode_split(dp.row_pages, 16, target, rows + target, 16);
          if (*std::max_element(s.row_splits.begin(), s.row_splits.end()) <= std::max(cluster, 2)) break;
        }
        DecodeConfig cfg{.head_dim = D, .group = group, .page_tokens = 16, .max_rows = rows,
                         .cuda_graph = rand_int(rng, 0, 1) == 1, .min_chunk_tokens = 16, .target_ctas = target,
                         .cluster_ctas = cluster};
        DecodeAttention attn(cfg);
        const auto got = run_decode(attn, pr, dp);
        const std::string what = "cluster=" + std::to_string(cluster) + " D=" + std::to_string(D) + " group=" +
                                 std::to_string(group) + " rows=" + std::to_string(rows) + " pieces=" +
                                 std::to_string(attn.split().work.size());
        ASSERT_EQ(attn.launch_cluster(), cluster) << what;
        ASSERT_GT(static_cast<int32_t>(attn.split().work.size()), rows) << what << ": no row was split";
        const auto work = static_cast<int32_t>(attn.split().work.size());
        cov.note(attn.split(), cluster, cfg.cuda_graph ? attn.work_capacity() : (work + cluster - 1) / cluster * cluster);
        expect_close(got, reference(pr), D, what.c_str());
        // Again on the same plan: the merges reset the row counts.
        expect_close(run_decode(attn, pr, dp), reference(pr), D, (what + " again").c_str());
      }
    }
    if (cluster > 1) {  // the cases the shapes are meant to produce did occur
      EXPECT_TRUE(cov.inside && cov.across && cov.mixed && cov.surplus) << "cluster=" << cluster;
      if (cluster > 2) EXPECT_TRUE(cov.long_segment) << "cluster=" << cluster;
    }
  }
}

TEST(DecodeAttentionGpu, LongContextSplitKv) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(99);
  for (const int32_t P : {16, 64}) {
    const DecodeProblem pr = make_problem(128, P, 4, 2, 1, 24000, {RowKind::kAll, RowKind::kStreaming}, rng, 16000);
    DecodeConfig cfg{.head_dim = 128, .group = 4, .page_tokens = P, .max_rows = 2};
    DecodeAttention attn(cfg);
    DeviceProblem dp(pr);
    const auto got = run_decode(attn, pr, dp);
    expect_close(got, reference(pr), 128, P == 16 ? "long P=16" : "long P=64");
  }
}

TEST(DecodeAttentionGpu, EmptyRowsAndEmptyBandGiveZeros) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(5);
  DecodeProblem pr = make_problem(64, 16, 2, 3, 2, 300, {RowKind::kEmpty, RowKind::kAll}, rng);
  pr.rows[0].mask = MaskKind::kBand;  // sink 0, local 0: no key at all
  pr.rows[0].sink = 0;
  pr.rows[0].local = 0;
  DecodeConfig cfg{.head_dim = 64, .group = 2, .page_tokens = 16, .max_rows = 6, .min_chunk_tokens = 16};
  DecodeAttention attn(cfg);
  DeviceProblem dp(pr);
  const auto got = run_decode(attn, pr, dp);
  expect_close(got, reference(pr), 64, "empty rows");
  for (int32_t i = 0; i < 2 * 64; ++i) EXPECT_EQ(bf16_to_f32(got[static_cast<size_t>(i)]), 0.0f);
}

// The ring's page list (sink + ring, positions per page) and the full list of every block give the
// same band attention: the sparse list equals the dense one under the expanded mask.
TEST(DecodeAttentionGpu, RingListEqualsFullListUnderBand) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(21);
  for (const int32_t P : {16, 64}) {
    DecodeProblem ring = make_problem(128, P, 4, 4, 3, 5000, {RowKind::kStreaming}, rng);
    // Same keys, every block listed: rebuild each row's list over a copy of the pool in block order.
    DecodeProblem full = ring;
    full.num_pages = 0;
    for (const RowPages& rp : ring.pages) full.num_pages += (rp.pos0.back() + rp.len.back() + P - 1) / P;
    const size_t full_elems = static_cast<size_t>(full.num_pages) * P * 128;
    full.k = random_bf16(full_elems, 2.5f, rng);  // blocks the ring no longer holds: any keys (masked)
    full.v = random_bf16(full_elems, 1.0f, rng);
    int32_t next = 0;
    for (size_t r = 0; r < ring.rows.size(); ++r) {
      const RowPages& rp = ring.pages[r];
      const int32_t len = rp.pos0.back() + rp.len.back();
      RowPages fp;
      for (int32_t b = 0; b * P < len; ++b) {
        fp.ids.push_back(next++);
        fp.pos0.push_back(b * P);
        fp.len.push_back(std::min(P, len - b * P));
      }
      for (size_t e = 0; e < rp.ids.size(); ++e) {  // copy the keys the ring holds
        const int32_t b = rp.pos0[e] / P;
        for (size_t i = 0; i < static_cast<size_t>(P) * 128; ++i) {
          const size_t src = static_cast<size_t>(rp.ids[e]) * P * 128 + i, dst = static_cast<size_t>(fp.ids[b]) * P * 128 + i;
          full.k.bits[dst] = ring.k.bits[src];
          full.k.f[dst] = ring.k.f[src];
          full.v.bits[dst] = ring.v.bits[src];
          full.v.f[dst] = ring.v.f[src];
        }
      }
      full.pages[r] = fp;
    }
    DecodeConfig cfg{.head_dim = 128, .group = 4, .page_tokens = P, .max_rows = 12};
    DecodeAttention attn(cfg);
    DeviceProblem dr(ring), df(full);
    const auto got_ring = run_decode(attn, ring, dr);
    const auto got_full = run_decode(attn, full, df);
    std::vector<float> as_ref(got_full.size());
    for (size_t i = 0; i < got_full.size(); ++i) as_ref[i] = bf16_to_f32(got_full[i]);
    expect_close(got_ring, as_ref, 128, "ring vs full list");
    expect_close(got_ring, reference(ring), 128, "ring vs CPU");
  }
}

// page_select's output (block indices per row) turned into the positions the decode kernel reads.
// device_bytes_bound (the engine's step memory counts it per layer) covers what the constructor
// allocates: measured as the device's free memory before and after, for workspaces large enough that
// the allocation granularity (2 MiB) does not hide them.
TEST(DecodeAttentionGpu, DeviceBytesBoundCoversTheAllocation) {
  SKIP_WITHOUT_GPU();
  for (const auto& [group, rows] : {std::pair{4, 100000}, std::pair{16, 30000}, std::pair{1, 200000}}) {
    const DecodeConfig cfg{.head_dim = 128, .group = group, .page_tokens = 64, .max_rows = rows};
    size_t before = 0, after = 0, total = 0;
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemGetInfo(&before, &total));
    {
      DecodeAttention attn(cfg);
      CUDA_CHECK(cudaMemGetInfo(&after, &total));
    }
    const size_t used = before - after, bound = DecodeAttention::device_bytes_bound(cfg);
    EXPECT_LE(used, bound + (size_t{6} << 20)) << "group " << group << " rows " << rows;  // 3 allocations, 2 MiB pages
    EXPECT_GE(used + (size_t{64} << 20), bound) << "the bound is not far above the allocation";
  }
}

TEST(DecodeAttentionGpu, ConfigChecksNameTheField) {
  SKIP_WITHOUT_GPU();
  const auto rejected = [](const DecodeConfig& c, const char* what) {
    try {
      DecodeAttention attn(c);
      ADD_FAILURE() << "no exception: " << what;
    } catch (const InternalError& e) {
      EXPECT_NE(std::string(e.what()).find("decode_attention_test.cu"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  rejected({.head_dim = 128, .group = 4, .page_tokens = 64, .max_rows = 4, .target_ctas = -1}, "target_ctas");
  rejected({.head_dim = 128, .group = 4, .page_tokens = 64, .max_rows = 4, .target_ctas = 641}, "target_ctas");
  rejected({.head_dim = 96, .group = 4, .page_tokens = 64, .max_rows = 4}, "head_dim");
  DecodeAttention attn({.head_dim = 128, .group = 4, .page_tokens = 64, .max_rows = 4});
  try {
    attn.run(DecodeArgs{}, nullptr);
    ADD_FAILURE() << "no exception";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("no plan"), std::string::npos) << e.what();
  }
}

// The launch mode follows the plan (DecodeConfig::programmatic_launch): a clustered plan whose longest
// piece reads more than kProgrammaticClusterMaxPieceBytes launches without programmatic launch, every
// other plan with it, and none with the config's flag off.
TEST(DecodeAttentionGpu, LaunchModeFollowsThePlan) {
  SKIP_WITHOUT_GPU();
  constexpr int32_t kRows = 16, P = 64, D = 128;
  constexpr int64_t kPageBytes = int64_t{P} * D * 2 * 2;  // K and V of one page
  std::vector<DecodeRow> rows;
  for (int32_t r = 0; r < kRows; ++r) rows.push_back({r, 0, 100000, MaskKind::kCausal, 0, 0, false});
  const auto longest_bytes = [&](const DecodeAttention& a, int32_t pages) {
    int64_t most = 0;
    for (const DecodeWorkItem& w : a.split().work) most = std::max<int64_t>(most, std::min(w.page_end, pages) - w.page_begin);
    return most * kPageBytes;
  };
  // Two pieces a row: clusters of two where the device has them.
  DecodeAttention two({.head_dim = D, .group = 4, .page_tokens = P, .max_rows = kRows, .target_ctas = 2 * kRows});
  const auto at_limit = static_cast<int32_t>(2 * (kProgrammaticClusterMaxPieceBytes / kPageBytes));
  for (const int32_t pages : {at_limit, at_limit + 2}) {
    two.plan(rows, std::vector<int32_t>(kRows, pages));
    ASSERT_EQ(two.split().work.size(), 2u * kRows);
    const int64_t longest = longest_bytes(two, pages);
    EXPECT_EQ(longest <= kProgrammaticClusterMaxPieceBytes, pages == at_limit) << longest;
    EXPECT_EQ(two.launch_programmatic(), two.launch_cluster() == 1 || pages == at_limit) << pages;
    if (two.launch_cluster() == 1) std::printf("(no clusters on this device: the long case launches programmatically)\n");
  }
  // Many pieces a row: no clusters, programmatic however long the pieces.
  DecodeAttention many({.head_dim = D, .group = 4, .page_tokens = P, .max_rows = 2, .target_ctas = 64});
  const std::vector<DecodeRow> two_rows(rows.begin(), rows.begin() + 2);
  many.plan(two_rows, std::vector<int32_t>(2, 40 * at_limit));
  EXPECT_EQ(many.launch_cluster(), 1);
  EXPECT_GT(longest_bytes(many, 40 * at_limit), kProgrammaticClusterMaxPieceBytes);
  EXPECT_TRUE(many.launch_programmatic());
  // The flag off: never.
  DecodeAttention off({.head_dim = D, .group = 4, .page_tokens = P, .max_rows = kRows, .target_ctas = 2 * kRows,
                       .programmatic_launch = false});
  off.plan(rows, std::vector<int32_t>(kRows, 4));
  EXPECT_FALSE(off.launch_programmatic());
}

TEST(DecodeAttentionGpu, FillBlockPositionsFromSelectedBlocks) {
  SKIP_WITHOUT_GPU();
  const std::vector<int32_t> indptr{0, 3, 4, 4, 6}, blocks{0, 1, 2, 0, 0, 5}, seq_lens{130, 64, 7, 321};
  const DeviceBuffer<int32_t> d_indptr{std::span<const int32_t>(indptr)}, d_blocks{std::span<const int32_t>(blocks)},
      d_lens{std::span<const int32_t>(seq_lens)};
  DeviceBuffer<int32_t> pos0(blocks.size()), len(blocks.size());
  pos0.fill_bytes(0xff);
  len.fill_bytes(0xff);
  fill_block_positions(d_indptr.data(), d_blocks.data(), d_lens.data(), 4, 64, pos0.data(), len.data());
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(pos0.download(), (std::vector<int32_t>{0, 64, 128, 0, 0, 320}));
  EXPECT_EQ(len.download(), (std::vector<int32_t>{64, 64, 2, 64, 64, 1}));
}

}  // namespace
}  // namespace sparseserve::kernels::cuda
