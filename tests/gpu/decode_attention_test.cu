// Paged decode attention (kernels/cuda/decode_attention.h) against its CPU twin
// (kernels/cpu/span_attention.h attend_spans) on fresh random bf16 inputs: retrieval rows over all
// pages, selected page subsets, streaming rows over sink + ring pages (token-exact Λ, sink not a
// multiple of the page), empty rows; split-KV with the merge; CUDA graph replay after a new plan;
// programmatic launch after a late producer and back to back.
// Outputs are poisoned (NaN) before every run. Skipped where no CUDA device exists, except the
// host-only plan tests.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "common/half.h"
#include "kernels/cpu/span_attention.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.h"
#include "late_copy.cuh"

namespace sparseserve::kernels::cuda {
namespace {

namespace cpu = kernels::cpu;
using bf16 = __nv_bfloat16;

#define SKIP_WITHOUT_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device"

// bf16 values on the host: the bits the GPU reads and their exact float values the CPU twin reads.
struct Bf16Array {
  std::vector<uint16_t> bits;
  std::vector<float> f;
  explicit Bf16Array(size_t n = 0) : bits(n), f(n) {}
  void set(size_t i, float x) {
    bits[i] = f32_to_bf16(x);
    f[i] = bf16_to_f32(bits[i]);
  }
};

Bf16Array random_bf16(size_t n, float scale, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-scale, scale);
  Bf16Array a(n);
  for (size_t i = 0; i < n; ++i) a.set(i, u(rng));
  return a;
}

int rand_int(std::mt19937& rng, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

enum class RowKind { kAll, kSelected, kStreaming, kStreamingFullList, kEmpty };

struct RowSpec {
  RowKind kind = RowKind::kAll;
  int32_t len = 1;        // context tokens (query at position len - 1)
  int32_t sink = 0, local = 0;
  int32_t select_sink = 0;  // kSelected: blocks holding positions < select_sink are always kept
};

// One row's page list (pool page ids, first positions, token counts).
struct RowPages {
  std::vector<int32_t> ids, pos0, len;
};

// A decode problem: pool, queries, rows and their page lists, on the host.
struct DecodeProblem {
  int32_t D = 128, P = 64, group = 1, n_kv_heads = 1, batch = 1;
  int64_t q_stride = 0;
  int32_t num_pages = 0;
  Bf16Array k, v, q;  // pool [num_pages][P][D]; q [batch][q_stride]
  std::vector<DecodeRow> rows;
  std::vector<RowPages> pages;
  float scale = 0.0f;

  int32_t n_q_heads() const { return n_kv_heads * group; }
  const float* q_head(int32_t token, int32_t head) const { return q.f.data() + token * q_stride + head * D; }
};

// Pages of a row of the given kind; ids come from `next_id` (distinct per call).
RowPages build_pages(const RowSpec& s, int32_t P, int32_t& next_id, std::mt19937& rng) {
  RowPages rp;
  const auto add = [&](int32_t block, int32_t id) {
    rp.ids.push_back(id);
    rp.pos0.push_back(block * P);
    rp.len.push_back(std::min(P, s.len - block * P));
  };
  if (s.kind == RowKind::kEmpty || s.len == 0) return rp;
  const int32_t nb = (s.len + P - 1) / P, last = nb - 1;
  switch (s.kind) {
    case RowKind::kAll:
    case RowKind::kStreamingFullList:
      for (int32_t b = 0; b < nb; ++b) add(b, next_id++);
      break;
    case RowKind::kSelected: {
      std::bernoulli_distribution keep(0.35);
      for (int32_t b = 0; b < nb; ++b) {
        if (b * P < s.select_sink || b == last || keep(rng)) add(b, next_id++);
      }
      break;
    }
    case RowKind::kStreaming: {
      // kvcache/README.md: sink pages, then a ring of ceil(local/P)+1 pages; block b ≥ sink_pages
      // lives in ring page (b − sink_pages) mod ring_pages.
      const int32_t sink_pages = (s.sink + P - 1) / P, ring_pages = (s.local + P - 1) / P + 1;
      for (int32_t b = 0; b < std::min(sink_pages, nb); ++b) add(b, next_id++);
      const int32_t ring0 = next_id;
      next_id += ring_pages;
      for (int32_t b = std::max(sink_pages, last - ring_pages + 1); b <= last; ++b) {
        add(b, ring0 + (b - sink_pages) % ring_pages);
      }
      break;
    }
    case RowKind::kEmpty:
      break;
  }
  return rp;
}

int32_t pages_needed(const RowSpec& s, int32_t P) {
  if (s.kind == RowKind::kEmpty || s.len == 0) return 0;
  const int32_t nb = (s.len + P - 1) / P;
  if (s.kind == RowKind::kStreaming) return (s.sink + P - 1) / P + (s.local + P - 1) / P + 1;
  return nb;
}

// Makes key j of row r score about `score` (natural units) for the row's first query head, so that
// including or excluding it moves the output far beyond rounding: the mask's edges become visible.
void spike_key(DecodeProblem& pr, size_t r, int32_t j, float score) {
  const RowPages& rp = pr.pages[r];
  for (size_t e = 0; e < rp.ids.size(); ++e) {
    if (j < rp.pos0[e] || j >= rp.pos0[e] + rp.len[e]) continue;
    const DecodeRow& row = pr.rows[r];
    const float* q = pr.q_head(row.q_row, row.kv_head * pr.group);
    float qq = 0.0f;
    for (int32_t d = 0; d < pr.D; ++d) qq += q[d] * q[d];
    const float c = score / (pr.scale * qq);
    const size_t base = (static_cast<size_t>(rp.ids[e]) * pr.P + (j - rp.pos0[e])) * pr.D;
    for (int32_t d = 0; d < pr.D; ++d) pr.k.set(base + d, c * q[d]);
  }
}

// Random problem: batch sequences × n_kv_heads rows, kinds drawn from `kinds`.
DecodeProblem make_problem(int32_t D, int32_t P, int32_t group, int32_t n_kv_heads, int32_t batch, int32_t max_len,
                           const std::vector<RowKind>& kinds, std::mt19937& rng, int32_t min_len = 1) {
  DecodeProblem pr;
  pr.D = D;
  pr.P = P;
  pr.group = group;
  pr.n_kv_heads = n_kv_heads;
  pr.batch = batch;
  pr.q_stride = int64_t{n_kv_heads} * group * D + 8 * rand_int(rng, 0, 2);  // padded rows too
  pr.scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<RowSpec> specs;
  for (int32_t s = 0; s < batch; ++s) {
    const int32_t len = rand_int(rng, min_len, max_len);
    for (int32_t h = 0; h < n_kv_heads; ++h) {
      RowSpec sp;
      sp.kind = kinds[static_cast<size_t>(rand_int(rng, 0, static_cast<int>(kinds.size()) - 1))];
      sp.len = len;
      // Sink never a multiple of the page; windows from a few tokens to several pages.
      do sp.sink = rand_int(rng, 1, 3 * P); while (sp.sink % P == 0);
      sp.local = rand_int(rng, 1, 5 * P);
      sp.select_sink = rand_int(rng, 0, 2 * P);
      specs.push_back(sp);
    }
  }
  int32_t needed = 0;
  for (const RowSpec& s : specs) needed += pages_needed(s, P);
  pr.num_pages = needed + rand_int(rng, 1, 8);
  // Keys with a wide score spread (peaked softmax), values in [-1, 1].
  pr.k = random_bf16(static_cast<size_t>(pr.num_pages) * P * D, 2.5f, rng);
  pr.v = random_bf16(static_cast<size_t>(pr.num_pages) * P * D, 1.0f, rng);
  pr.q = random_bf16(static_cast<size_t>(batch) * pr.q_stride, 1.0f, rng);

  // Page ids: a random permutation of the pool, handed out in order.
  std::vector<int32_t> perm(static_cast<size_t>(pr.num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  int32_t next = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const RowSpec& sp = specs[i];
    RowPages rp = build_pages(sp, P, next, rng);
    for (int32_t& id : rp.ids) id = perm[static_cast<size_t>(id)];
    DecodeRow row;
    row.q_row = static_cast<int32_t>(i) / n_kv_heads;
    row.kv_head = static_cast<int32_t>(i) % n_kv_heads;
    row.q_pos = sp.len - 1;
    if (sp.kind == RowKind::kStreaming || sp.kind == RowKind::kStreamingFullList) {
      row.mask = MaskKind::kBand;
      row.sink = sp.sink;
      row.local = sp.local;
    }
    pr.rows.push_back(row);
    pr.pages.push_back(std::move(rp));
  }
  // Spikes at the band's edges: t − local (outside unless in the sink), t − local + 1 (inside),
  // sink − 1 (inside) and sink (outside unless in the window).
  for (size_t r = 0; r < pr.rows.size(); ++r) {
    const DecodeRow& row = pr.rows[r];
    if (row.mask != MaskKind::kBand) continue;
    const int32_t t = row.q_pos;
    const int32_t edges[4] = {t - row.local, t - row.local + 1, row.sink - 1, row.sink};
    const int32_t pick = edges[rand_int(rng, 0, 3)];
    if (pick >= 0 && pick <= t) spike_key(pr, r, pick, 12.0f);
  }
  return pr;
}

// Device copies of a problem's pool, queries and page lists.
struct DeviceProblem {
  DeviceBuffer<bf16> k, v, q, o;
  DeviceBuffer<int32_t> indptr, ids, pos0, len;
  std::vector<int32_t> row_pages;

  explicit DeviceProblem(const DecodeProblem& pr, size_t list_capacity = 0, size_t row_capacity = 0) {
    k = DeviceBuffer<bf16>(std::span<const uint16_t>(pr.k.bits));
    v = DeviceBuffer<bf16>(std::span<const uint16_t>(pr.v.bits));
    q = DeviceBuffer<bf16>(std::span<const uint16_t>(pr.q.bits));
    o = DeviceBuffer<bf16>(static_cast<size_t>(pr.batch) * pr.n_q_heads() * pr.D);
    std::vector<int32_t> ip{0}, id, p0, ln;
    for (const RowPages& rp : pr.pages) {
      id.insert(id.end(), rp.ids.begin(), rp.ids.end());
      p0.insert(p0.end(), rp.pos0.begin(), rp.pos0.end());
      ln.insert(ln.end(), rp.len.begin(), rp.len.end());
      ip.push_back(static_cast<int32_t>(id.size()));
      row_pages.push_back(static_cast<int32_t>(rp.ids.size()));
    }
    const size_t n = std::max<size_t>({id.size(), list_capacity, 1});
    indptr = DeviceBuffer<int32_t>(std::max(ip.size(), row_capacity + 1));
    ids = DeviceBuffer<int32_t>(n);
    pos0 = DeviceBuffer<int32_t>(n);
    len = DeviceBuffer<int32_t>(n);
    indptr.upload(ip);
    ids.upload(id);
    pos0.upload(p0);
    len.upload(ln);
  }

  DecodeArgs args(const DecodeProblem& pr) {
    DecodeArgs a;
    a.q = q.data();
    a.q_stride = pr.q_stride;
    a.o = o.data();
    a.o_stride = int64_t{pr.n_q_heads()} * pr.D;
    a.kv = {k.data(), v.data(), pr.num_pages, pr.P, pr.D};
    a.pages = {indptr.data(), ids.data(), pos0.data(), len.data()};
    a.scale = pr.scale;
    return a;
  }
};

// CPU twin: o[token][head][D] for every row's group.
std::vector<float> reference(const DecodeProblem& pr) {
  std::vector<float> out(static_cast<size_t>(pr.batch) * pr.n_q_heads() * pr.D, 0.0f);
  std::vector<float> scratch;
  for (size_t r = 0; r < pr.rows.size(); ++r) {
    const DecodeRow& row = pr.rows[r];
    const RowPages& rp = pr.pages[r];
    std::vector<cpu::KeySpan> spans;
    for (size_t e = 0; e < rp.ids.size(); ++e) {
      const size_t base = static_cast<size_t>(rp.ids[e]) * pr.P * pr.D;
      spans.push_back({pr.k.f.data() + base, pr.v.f.data() + base, rp.pos0[e], rp.len[e], pr.D});
    }
    const cpu::AttentionMask mask =
        row.mask == MaskKind::kBand ? cpu::AttentionMask::band(row.sink, row.local) : cpu::AttentionMask::causal();
    for (int32_t g = 0; g < pr.group; ++g) {
      const int32_t h = row.kv_head * pr.group + g;
      cpu::attend_spans(pr.q_head(row.q_row, h), row.q_pos, spans, mask, pr.D, pr.scale,
                        out.data() + (static_cast<size_t>(row.q_row) * pr.n_q_heads() + h) * pr.D, scratch);
    }
  }
  return out;
}

// Every element finite; ‖out − ref‖/‖ref‖ ≤ 1e-2 overall and ≤ 3e-2 per (token, head) row.
void expect_close(const std::vector<uint16_t>& got_bits, const std::vector<float>& ref, int32_t D, const char* what) {
  ASSERT_EQ(got_bits.size(), ref.size());
  double err2 = 0.0, ref2 = 0.0;
  int bad_rows = 0, non_finite = 0;
  for (size_t r0 = 0; r0 < ref.size(); r0 += static_cast<size_t>(D)) {
    double e2 = 0.0, n2 = 0.0;
    for (size_t i = r0; i < r0 + static_cast<size_t>(D); ++i) {
      const float g = bf16_to_f32(got_bits[i]);
      if (!std::isfinite(g)) ++non_finite;
      e2 += (static_cast<double>(g) - ref[i]) * (static_cast<double>(g) - ref[i]);
      n2 += static_cast<double>(ref[i]) * ref[i];
    }
    err2 += e2;
    ref2 += n2;
    const double floor2 = 1e-4 * D;  // rows whose reference is (near) zero
    if (e2 > 9e-4 * std::max(n2, floor2)) {
      if (bad_rows < 5) {
        ADD_FAILURE() << what << ": row " << r0 / static_cast<size_t>(D) << " rel err " << std::sqrt(e2 / std::max(n2, floor2));
      }
      ++bad_rows;
    }
  }
  EXPECT_EQ(non_finite, 0) << what << ": non-finite outputs (unwritten or NaN)";
  EXPECT_EQ(bad_rows, 0) << what;
  EXPECT_LE(std::sqrt(err2 / std::max(ref2, 1e-30)), 1e-2) << what;
}

std::vector<uint16_t> run_decode(DecodeAttention& attn, const DecodeProblem& pr, DeviceProblem& dp) {
  dp.o.fill_bytes(0xff);
  attn.plan(pr.rows, dp.row_pages);
  attn.run(dp.args(pr));
  CUDA_CHECK(cudaDeviceSynchronize());
  return dp.o.download<uint16_t>();
}

// ---- host-only -------------------------------------------------------------------------------------

TEST(DecodeSplitPlan, CoversEveryPageOnceAndRespectsCapacity) {
  std::mt19937 rng(7);
  for (int iter = 0; iter < 200; ++iter) {
    const int rows = rand_int(rng, 0, 40);
    std::vector<int32_t> pages(static_cast<size_t>(rows));
    for (int32_t& p : pages) p = rand_int(rng, 0, 3000);
    const int32_t target = rand_int(rng, 1, 300), max_work = rows + target;
    const DecodeSplit s = plan_decode_split(pages, 16, target, max_work, rand_int(rng, 1, 512));
    ASSERT_LE(static_cast<int32_t>(s.work.size()), max_work);
    ASSERT_EQ(s.row_splits.size(), pages.size());
    int32_t partials = 0;
    size_t w = 0;
    for (int r = 0; r < rows; ++r) {
      const int32_t n = s.row_splits[static_cast<size_t>(r)];
      ASSERT_GE(n, 1);
      int32_t expect_begin = 0;
      for (int32_t i = 0; i < n; ++i, ++w) {
        const DecodeWorkItem& it = s.work[w];
        EXPECT_EQ(it.row, r);
        EXPECT_EQ(it.page_begin, expect_begin);
        if (i + 1 == n) {
          EXPECT_EQ(it.page_end, INT32_MAX);  // the last piece takes the rest
        } else {
          EXPECT_EQ(it.page_end - it.page_begin, s.chunk_pages);
        }
        EXPECT_EQ(it.partial, n > 1 ? s.row_partial0[static_cast<size_t>(r)] + i : -1);
        expect_begin = it.page_end;
      }
      if (n > 1) {
        EXPECT_LT(int64_t{n - 1} * s.chunk_pages, pages[static_cast<size_t>(r)]);
        partials += n;
      }
    }
    EXPECT_EQ(w, s.work.size());
    EXPECT_EQ(partials, s.num_partials);
  }
}

TEST(DecodeSplitPlan, SplitsLongRowsOfSmallBatches) {
  const std::vector<int32_t> pages(8, 2048);  // batch 1, 8 KV heads, 128K tokens in 64-token pages
  const DecodeSplit s = plan_decode_split(pages, 64, 264, 8 + 264, 256);
  EXPECT_GE(s.work.size(), 200u);
  EXPECT_LE(s.work.size(), 272u);
  const std::vector<int32_t> many(512, 128);  // many rows: no split
  EXPECT_EQ(plan_decode_split(many, 64, 264, 512 + 264, 256).work.size(), 512u);
}

// ---- against the CPU twin ------------------------------------------------------------------------

// The pool slots past each entry's page_len set to NaN in the copy the kernel reads: their bits must
// not reach the output (the copies zero-fill such rows).
void poison_empty_slots(DecodeProblem& pr) {
  constexpr uint16_t kNaN = 0x7fc0;
  for (const RowPages& rp : pr.pages) {
    for (size_t e = 0; e < rp.ids.size(); ++e) {
      for (int32_t s = rp.len[e]; s < pr.P; ++s) {
        const size_t base = (static_cast<size_t>(rp.ids[e]) * pr.P + s) * pr.D;
        std::fill_n(pr.k.bits.begin() + static_cast<std::ptrdiff_t>(base), pr.D, kNaN);
        std::fill_n(pr.v.bits.begin() + static_cast<std::ptrdiff_t>(base), pr.D, kNaN);
      }
    }
  }
}

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

// Renumbers the pool's pages so that every row's last list entry lies in the pool's top pages (the
// data moves with the ids); returns the first of them.
int32_t last_entries_to_top(DecodeProblem& pr) {
  std::vector<char> is_last(static_cast<size_t>(pr.num_pages), 0);
  for (const RowPages& rp : pr.pages) {
    if (!rp.ids.empty()) is_last[static_cast<size_t>(rp.ids.back())] = 1;
  }
  std::vector<int32_t> new_id(static_cast<size_t>(pr.num_pages));
  int32_t n = 0;
  for (int32_t id = 0; id < pr.num_pages; ++id) {
    if (!is_last[static_cast<size_t>(id)]) new_id[static_cast<size_t>(id)] = n++;
  }
  const int32_t top = n;
  for (int32_t id = 0; id < pr.num_pages; ++id) {
    if (is_last[static_cast<size_t>(id)]) new_id[static_cast<size_t>(id)] = n++;
  }
  const size_t page = static_cast<size_t>(pr.P) * pr.D;
  for (Bf16Array* a : {&pr.k, &pr.v}) {
    Bf16Array moved(a->bits.size());
    for (int32_t id = 0; id < pr.num_pages; ++id) {
      const size_t from = static_cast<size_t>(id) * page, to = static_cast<size_t>(new_id[static_cast<size_t>(id)]) * page;
      std::copy_n(a->bits.begin() + static_cast<std::ptrdiff_t>(from), page, moved.bits.begin() + static_cast<std::ptrdiff_t>(to));
      std::copy_n(a->f.begin() + static_cast<std::ptrdiff_t>(from), page, moved.f.begin() + static_cast<std::ptrdiff_t>(to));
    }
    *a = std::move(moved);
  }
  for (RowPages& rp : pr.pages) {
    for (int32_t& id : rp.ids) id = new_id[static_cast<size_t>(id)];
  }
  return top;
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
    const DeviceBuffer<bf16> q_late{std::span<const uint16_t>(pr.q.bits)};
    const DeviceBuffer<bf16> k_late{std::span<const uint16_t>(pr.k.bits)}, v_late{std::span<const uint16_t>(pr.v.bits)};
    const size_t off = static_cast<size_t>(top) * P * 128, bytes = (static_cast<size_t>(pr.num_pages - top) * P * 128) * 2;
    for (const int32_t target : {0, 2 * rows - 1}) {
      DecodeConfig cfg{.head_dim = 128, .group = 4, .page_tokens = P, .max_rows = rows, .min_chunk_tokens = 64,
                       .target_ctas = target};
      DecodeAttention attn(cfg);
      attn.plan(pr.rows, dp.row_pages, stream);
      const DecodeArgs args = dp.args(pr);
      for (int rep = 0; rep < 2; ++rep) {
        dp.q.fill_bytes(0xff, stream);
        CUDA_CHECK(cudaMemsetAsync(dp.k.data() + off, 0xff, bytes, stream));
        CUDA_CHECK(cudaMemsetAsync(dp.v.data() + off, 0xff, bytes, stream));
        dp.o.fill_bytes(0xff, stream);
        gpu_test::hold_stream(stream);
        gpu_test::late_copy({{q_late.data(), dp.q.data(), q_late.bytes()},
                             {k_late.data() + off, dp.k.data() + off, bytes},
                             {v_late.data() + off, dp.v.data() + off, bytes}},
                            stream);
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
    const size_t at = (static_cast<size_t>(row.q_row) * pr.n_q_heads() + static_cast<size_t>(row.kv_head) * pr.group) * pr.D;
    const std::vector<uint16_t> got_row(got.begin() + static_cast<std::ptrdiff_t>(at),
                                        got.begin() + static_cast<std::ptrdiff_t>(at + per_row));
    if (!row.pages_plan_time) {
      const std::vector<float> ref_row(ref.begin() + static_cast<std::ptrdiff_t>(at),
                                       ref.begin() + static_cast<std::ptrdiff_t>(at + per_row));
      expect_close(got_row, ref_row, pr.D, ("row " + std::to_string(r) + " without early copies").c_str());
    } else if (major >= 9) {
      const auto nan = std::count_if(got_row.begin(), got_row.end(), [](uint16_t b) { return !std::isfinite(bf16_to_f32(b)); });
      EXPECT_GT(nan, 0) << "row " << r << ": early copies should have read the pool before the late producer wrote it";
    }
  }
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
