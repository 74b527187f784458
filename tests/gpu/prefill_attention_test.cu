// Paged prefill attention (kernels/cuda/prefill_attention.h) against its CPU twins
// (kernels/cpu/span_attention.h attend_spans per query; kernels/cpu/attention_block.h attend_block
// over gathered keys) on fresh random bf16 inputs: varlen batches of chunks after a history, per
// (sequence, KV head) rows dense causal / streaming band (sink + ring pages + the chunk's own K/V)
// / block masks (random and XAttention's, several block sizes in one launch), GQA packing, page
// sizes 16, 32, 64 and 128, page lists with gaps and partial pages, head dims 64 and 128.
// The tile-skipping run must equal the dense run under the expanded mask bit for bit (within the bf16
// tolerance for rows whose key units the Hopper kernel gathers); a one-token chunk must agree with
// the decode kernel. Outputs are poisoned (NaN) before every run.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "attention_test_util.h"
#include "common/half.h"
#include "kernels/cpu/attention_block.h"
#include "kernels/cpu/block_sparse.h"
#include "kernels/cpu/span_attention.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/prefill_attention.h"

namespace sparseserve::kernels::cuda {
namespace {

namespace cpu = kernels::cpu;
using bf16 = __nv_bfloat16;

using namespace gpu_test;  // Bf16Array, RowPages, HostPageLists, random_bf16, rand_int, expect_close

enum class Mode { kCausal, kCausalNewKv, kBand, kBlocks };

// A prefill step: sequences with a history (already in pages) and a chunk of new tokens.
struct PrefillProblem {
  int32_t D = 128, P = 64, group = 1, n_kv_heads = 1;
  std::vector<int32_t> history, chunk, row0;  // per sequence; row0 = first token row of the chunk
  int32_t tokens = 0;
  int64_t q_stride = 0, kv_stride = 0;
  int32_t num_pages = 0;
  Bf16Array k, v;          // pool [num_pages][P][D]
  Bf16Array q;             // [tokens][q_stride]
  Bf16Array k_new, v_new;  // [tokens][kv_stride], KV head h at h*D
  std::vector<PrefillRow> rows;
  std::vector<RowPages> pages;
  std::vector<uint8_t> allowed;  // block mask rows of every kBlocks row
  float scale = 0.0f;

  int32_t n_q_heads() const { return n_kv_heads * group; }
};

struct ProblemShape {
  int32_t D = 128, P = 64, group = 1, n_kv_heads = 1, batch = 1;
  int32_t max_history = 0, max_chunk = 1;
  int32_t min_history = 0, min_chunk = 1;
  std::vector<Mode> modes;
  int32_t sink = -1, local = -1;  // −1: random per row
  int32_t block_tokens = 64;
  std::vector<int32_t> block_choices;  // non-empty: the kBlocks rows' block sizes, in turn
  double block_density = 0.3;
  // Lists of causal and kBlocks rows with gaps and partial pages (shifted within the page) among the
  // entries wholly before the chunk, as the list contract allows (KeyPageList); entry 0 stays whole.
  bool ragged_history = false;
  bool xattention_blocks = false;  // kBlocks rows from cpu::xattention_block_mask on the row's q / k
};

ProblemShape shape(int32_t D, int32_t P, int32_t group, int32_t n_kv_heads, int32_t batch, int32_t max_history,
                   int32_t max_chunk) {
  ProblemShape s;
  s.D = D;
  s.P = P;
  s.group = group;
  s.n_kv_heads = n_kv_heads;
  s.batch = batch;
  s.max_history = max_history;
  s.max_chunk = max_chunk;
  return s;
}

PrefillProblem make_problem(const ProblemShape& sh, std::mt19937& rng) {
  PrefillProblem pr;
  pr.D = sh.D;
  pr.P = sh.P;
  pr.group = sh.group;
  pr.n_kv_heads = sh.n_kv_heads;
  pr.scale = 1.0f / std::sqrt(static_cast<float>(sh.D));
  const int32_t D = sh.D, P = sh.P;
  for (int32_t s = 0; s < sh.batch; ++s) {
    pr.history.push_back(rand_int(rng, sh.min_history, sh.max_history));
    pr.chunk.push_back(rand_int(rng, sh.min_chunk, sh.max_chunk));
    pr.row0.push_back(pr.tokens);
    pr.tokens += pr.chunk.back();
  }
  pr.q_stride = int64_t{pr.n_q_heads()} * D + 8 * rand_int(rng, 0, 1);
  pr.kv_stride = int64_t{sh.n_kv_heads} * D + 8 * rand_int(rng, 0, 1);
  pr.q = random_bf16(static_cast<size_t>(pr.tokens) * pr.q_stride, 1.0f, rng);
  pr.k_new = random_bf16(static_cast<size_t>(pr.tokens) * pr.kv_stride, 2.5f, rng);
  pr.v_new = random_bf16(static_cast<size_t>(pr.tokens) * pr.kv_stride, 1.0f, rng);

  // Rows and their page lists (page ids assigned below from a permutation of the pool).
  struct Pending {
    std::vector<int32_t> blocks;  // logical block of each list entry
    std::vector<int32_t> slot;    // pool slot index (before permutation) of each entry
    // Causal and kBlocks rows, per entry: its first position's offset in logical page b, and its
    // length (whole pages: 0 and min(P, upto − b·P)); empty for band rows.
    std::vector<int32_t> first, count;
    int32_t upto = 0;                   // positions < upto are stored in the pages
  };
  std::vector<Pending> pend;
  int32_t next_slot = 0;
  size_t blocks_rows = 0;
  for (int32_t s = 0; s < sh.batch; ++s) {
    const int32_t h = pr.history[static_cast<size_t>(s)], n = pr.chunk[static_cast<size_t>(s)];
    for (int32_t kvh = 0; kvh < sh.n_kv_heads; ++kvh) {
      const Mode mode = sh.modes[static_cast<size_t>(rand_int(rng, 0, static_cast<int>(sh.modes.size()) - 1))];
      PrefillRow row;
      row.q_row0 = pr.row0[static_cast<size_t>(s)];
      row.n_tokens = n;
      row.q_pos0 = h;
      row.kv_head = kvh;
      Pending pd;
      if (mode == Mode::kBand) {
        row.mask = MaskKind::kBand;
        row.sink = sh.sink >= 0 ? sh.sink : rand_int(rng, 1, 3 * P);
        if (sh.sink < 0 && row.sink % P == 0) ++row.sink;  // a sink that ends inside a page
        row.local = sh.local >= 0 ? sh.local : rand_int(rng, 1, 4 * P);
        row.new_kv = 1;
        // Sink pages and the ring's pages before the chunk (kvcache/README.md), the chunk from k_new.
        const int32_t sink_pages = (row.sink + P - 1) / P, ring_pages = (row.local + P - 1) / P + 1;
        const int32_t last = h > 0 ? (h - 1) / P : -1;
        for (int32_t b = 0; b < sink_pages && b <= last; ++b) {
          pd.blocks.push_back(b);
          pd.slot.push_back(next_slot++);
        }
        const int32_t ring0 = next_slot;
        next_slot += ring_pages;
        for (int32_t b = std::max(sink_pages, last - ring_pages + 1); b <= last; ++b) {
          pd.blocks.push_back(b);
          pd.slot.push_back(ring0 + (b - sink_pages) % ring_pages);
        }
        pd.upto = h;
      } else {
        row.mask = mode == Mode::kBlocks ? MaskKind::kBlocks : MaskKind::kCausal;
        if (mode == Mode::kBlocks) {  // with block_choices, kBlocks rows take them in turn
          row.block_tokens = sh.block_choices.empty() ? sh.block_tokens
                                                      : sh.block_choices[blocks_rows++ % sh.block_choices.size()];
        }
        row.new_kv = mode == Mode::kCausalNewKv || (mode == Mode::kBlocks && rand_int(rng, 0, 1) == 1);
        pd.upto = row.new_kv ? h : h + n;  // without new_kv the chunk's K/V are in the pages too
        // Ragged lists: the first two entries that may be (past entry 0, wholly before the chunk)
        // are a gap and a partial page, in a random order; later ones are either with odds 1/6.
        const int first_kind = rand_int(rng, 0, 1);
        for (int32_t b = 0, eligible = 0; b * P < pd.upto; ++b) {
          int32_t first = 0, count = std::min(P, pd.upto - b * P);
          if (sh.ragged_history && b > 0 && (b + 1) * P <= h) {
            const int pick = eligible < 2 ? (eligible + first_kind) % 2 : rand_int(rng, 0, 5);
            ++eligible;
            if (pick == 0) continue;  // a gap: the page is not listed
            if (pick == 1) {          // a partial page, its keys anywhere in it
              first = rand_int(rng, 0, P - 1);
              count = rand_int(rng, 1, P - first);
            }
          }
          pd.blocks.push_back(b);
          pd.slot.push_back(next_slot++);
          pd.first.push_back(first);
          pd.count.push_back(count);
        }
      }
      pr.rows.push_back(row);
      pend.push_back(std::move(pd));
    }
  }
  pr.num_pages = next_slot + rand_int(rng, 1, 6);
  pr.k = random_bf16(static_cast<size_t>(pr.num_pages) * P * D, 2.5f, rng);
  pr.v = random_bf16(static_cast<size_t>(pr.num_pages) * P * D, 1.0f, rng);
  std::vector<int32_t> perm(static_cast<size_t>(pr.num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (size_t r = 0; r < pr.rows.size(); ++r) {
    const PrefillRow& row = pr.rows[r];
    const Pending& pd = pend[r];
    RowPages rp;
    for (size_t e = 0; e < pd.blocks.size(); ++e) {
      const int32_t b = pd.blocks[e], id = perm[static_cast<size_t>(pd.slot[e])];
      rp.ids.push_back(id);
      if (pd.first.empty()) {  // band rows: whole pages up to upto
        rp.pos0.push_back(b * P);
        rp.len.push_back(std::min(P, pd.upto - b * P));
      } else {
        rp.pos0.push_back(b * P + pd.first[e]);
        rp.len.push_back(pd.count[e]);
      }
      // Chunk positions stored in pages hold the chunk's own K/V (as the engine writes them).
      for (int32_t i = 0; i < rp.len.back(); ++i) {
        const int32_t pos = rp.pos0.back() + i;
        if (pos < row.q_pos0) continue;
        const size_t src = static_cast<size_t>(row.q_row0 + pos - row.q_pos0) * pr.kv_stride + static_cast<size_t>(row.kv_head) * D;
        const size_t dst = (static_cast<size_t>(id) * P + i) * D;
        for (int32_t d = 0; d < D; ++d) {
          pr.k.copy(dst + d, pr.k_new, src + d);
          pr.v.copy(dst + d, pr.v_new, src + d);
        }
      }
    }
    pr.pages.push_back(std::move(rp));
  }

  // Block masks.
  for (size_t r = 0; r < pr.rows.size(); ++r) {
    PrefillRow& row = pr.rows[r];
    if (row.mask != MaskKind::kBlocks) continue;
    const int32_t h = row.q_pos0, n = row.n_tokens, L = h + n, B = row.block_tokens;
    row.block_offset = static_cast<int64_t>(pr.allowed.size());
    row.first_qblock = h / B;
    row.n_kblocks = (L + B - 1) / B;
    const int32_t n_qblocks = (L - 1) / B - h / B + 1;
    if (sh.xattention_blocks) {
      // Keys 0 .. L−1 contiguous, gathered from the pages / chunk.
      std::vector<float> keys(static_cast<size_t>(L) * D);
      const RowPages& rp = pr.pages[r];
      for (size_t e = 0; e < rp.ids.size(); ++e) {
        for (int32_t i = 0; i < rp.len[e]; ++i) {
          std::copy_n(pr.k.f.data() + (static_cast<size_t>(rp.ids[e]) * P + i) * D, D, keys.data() + static_cast<size_t>(rp.pos0[e] + i) * D);
        }
      }
      if (row.new_kv) {
        for (int32_t i = 0; i < n; ++i) {
          std::copy_n(pr.k_new.f.data() + static_cast<size_t>(row.q_row0 + i) * pr.kv_stride + static_cast<size_t>(row.kv_head) * D, D,
                      keys.data() + static_cast<size_t>(h + i) * D);
        }
      }
      const cpu::BlockMask bm = cpu::xattention_block_mask(
          pr.q.f.data() + static_cast<size_t>(row.q_row0) * pr.q_stride + static_cast<size_t>(row.kv_head) * sh.group * D,
          pr.q_stride, sh.group, h, n, keys.data(), D, B, 8, 0.6f);
      EXPECT_EQ(bm.n_kblocks, row.n_kblocks);
      EXPECT_EQ(bm.n_qblocks, n_qblocks);
      pr.allowed.insert(pr.allowed.end(), bm.allowed.begin(), bm.allowed.end());
    } else {
      std::bernoulli_distribution on(sh.block_density);
      for (int32_t qb = 0; qb < n_qblocks; ++qb) {
        for (int32_t kb = 0; kb < row.n_kblocks; ++kb) {
          // Mostly XAttention-like rows (block 0 and the diagonal kept), sometimes arbitrary ones.
          const bool forced = rand_int(rng, 0, 9) > 0 && (kb == 0 || kb == row.first_qblock + qb);
          pr.allowed.push_back(forced || on(rng) ? 1 : 0);
        }
      }
    }
  }
  return pr;
}

struct DeviceProblem {
  DeviceBuffer<bf16> k, v, q, o, k_new, v_new;
  DeviceBuffer<int32_t> indptr, ids, pos0, len;
  DeviceBuffer<uint8_t> allowed;

  explicit DeviceProblem(const PrefillProblem& pr) {
    k = DeviceBuffer<bf16>(std::span<const uint16_t>(pr.k.bits));
    v = DeviceBuffer<bf16>(std::span<const uint16_t>(pr.v.bits));
    q = DeviceBuffer<bf16>(std::span<const uint16_t>(pr.q.bits));
    k_new = DeviceBuffer<bf16>(std::span<const uint16_t>(pr.k_new.bits));
    v_new = DeviceBuffer<bf16>(std::span<const uint16_t>(pr.v_new.bits));
    o = DeviceBuffer<bf16>(static_cast<size_t>(pr.tokens) * pr.n_q_heads() * pr.D);
    HostPageLists lists(pr.pages);
    if (lists.ids.empty()) lists.ids = lists.pos0 = lists.len = {0};
    indptr = DeviceBuffer<int32_t>(std::span<const int32_t>(lists.indptr));
    ids = DeviceBuffer<int32_t>(std::span<const int32_t>(lists.ids));
    pos0 = DeviceBuffer<int32_t>(std::span<const int32_t>(lists.pos0));
    len = DeviceBuffer<int32_t>(std::span<const int32_t>(lists.len));
    std::vector<uint8_t> al = pr.allowed;
    if (al.empty()) al.push_back(0);
    allowed = DeviceBuffer<uint8_t>(std::span<const uint8_t>(al));
  }

  PrefillArgs args(const PrefillProblem& pr) {
    PrefillArgs a;
    a.q = q.data();
    a.q_stride = pr.q_stride;
    a.o = o.data();
    a.o_stride = int64_t{pr.n_q_heads()} * pr.D;
    a.k_new = k_new.data();
    a.v_new = v_new.data();
    a.kv_new_stride = pr.kv_stride;
    a.kv = {k.data(), v.data(), pr.num_pages, pr.P, pr.D};
    a.pages = {indptr.data(), ids.data(), pos0.data(), len.data()};
    a.block_allowed = allowed.data();
    a.scale = pr.scale;
    return a;
  }
};

std::vector<cpu::KeySpan> spans_of(const PrefillProblem& pr, size_t r) {
  const PrefillRow& row = pr.rows[r];
  const RowPages& rp = pr.pages[r];
  std::vector<cpu::KeySpan> spans;
  for (size_t e = 0; e < rp.ids.size(); ++e) {
    const size_t base = static_cast<size_t>(rp.ids[e]) * pr.P * pr.D;
    spans.push_back({pr.k.f.data() + base, pr.v.f.data() + base, rp.pos0[e], rp.len[e], pr.D});
  }
  if (row.new_kv) {
    const size_t base = static_cast<size_t>(row.q_row0) * pr.kv_stride + static_cast<size_t>(row.kv_head) * pr.D;
    spans.push_back({pr.k_new.f.data() + base, pr.v_new.f.data() + base, row.q_pos0, row.n_tokens,
                     static_cast<int32_t>(pr.kv_stride)});
  }
  return spans;
}

// CPU twin, per query (attend_spans): out [tokens][heads][D].
std::vector<float> reference(const PrefillProblem& pr) {
  std::vector<float> out(static_cast<size_t>(pr.tokens) * pr.n_q_heads() * pr.D, 0.0f);
  std::vector<float> scratch;
  for (size_t r = 0; r < pr.rows.size(); ++r) {
    const PrefillRow& row = pr.rows[r];
    const std::vector<cpu::KeySpan> spans = spans_of(pr, r);
    for (int32_t i = 0; i < row.n_tokens; ++i) {
      const int32_t t = row.q_pos0 + i;
      cpu::AttentionMask mask = cpu::AttentionMask::causal();
      if (row.mask == MaskKind::kBand) mask = cpu::AttentionMask::band(row.sink, row.local);
      if (row.mask == MaskKind::kBlocks) {
        const uint8_t* brow = pr.allowed.data() + row.block_offset +
                              static_cast<size_t>(t / row.block_tokens - row.first_qblock) * row.n_kblocks;
        mask = cpu::AttentionMask::blocks(brow, row.block_tokens);
      }
      for (int32_t g = 0; g < pr.group; ++g) {
        const int32_t hd = row.kv_head * pr.group + g;
        cpu::attend_spans(pr.q.f.data() + static_cast<size_t>(row.q_row0 + i) * pr.q_stride + static_cast<size_t>(hd) * pr.D, t,
                          spans, mask, pr.D, pr.scale,
                          out.data() + (static_cast<size_t>(row.q_row0 + i) * pr.n_q_heads() + hd) * pr.D, scratch);
      }
    }
  }
  return out;
}

// The kernels this device runs: mma.sync everywhere, wgmma on compute capability 9.0.
std::vector<PrefillKernel> device_kernels() {
  int device = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major == 9 && minor == 0) return {PrefillKernel::kMmaSync, PrefillKernel::kWgmma};
  return {PrefillKernel::kMmaSync};
}

std::string kernel_name(PrefillKernel k) { return k == PrefillKernel::kWgmma ? "wgmma" : "mma.sync"; }

// PrefillConfig's key split (min_split_keys, split_ctas); the default is the library's.
struct SplitConfig {
  int32_t min_split_keys = PrefillConfig{}.min_split_keys;
  int32_t split_ctas = 0;
};

std::vector<uint16_t> run_prefill(const PrefillProblem& pr, DeviceProblem& dp, bool skip_tiles,
                                  PrefillKernel kernel = PrefillKernel::kAuto, const SplitConfig& split = {},
                                  size_t* merges = nullptr) {
  PrefillConfig cfg;
  cfg.head_dim = pr.D;
  cfg.group = pr.group;
  cfg.page_tokens = pr.P;
  cfg.skip_tiles = skip_tiles;
  cfg.kernel = kernel;
  cfg.min_split_keys = split.min_split_keys;
  cfg.split_ctas = split.split_ctas;
  PrefillAttention attn(cfg);
  dp.o.fill_bytes(0xff);
  attn.plan(pr.rows);
  // The partials poisoned too: a merge must read only what the pieces wrote.
  DeviceBuffer<float> ws(static_cast<size_t>(std::max<int64_t>(attn.workspace_floats(), 1)));
  ws.fill_bytes(0xff);
  PrefillArgs a = dp.args(pr);
  a.workspace = ws.data();
  a.workspace_floats = attn.workspace_floats();
  attn.run(a);
  CUDA_CHECK(cudaDeviceSynchronize());
  if (merges != nullptr) *merges = attn.merges().size();
  return dp.o.download<uint16_t>();
}

// Whether each output element belongs to a kBlocks row whose visible units the Hopper kernel gathers
// into tiles: blocks smaller than its key tiles (sm90_small_blocks; larger blocks make the gathered
// units whole tiles, in the dense run's order).
std::vector<bool> gathered_outputs(const PrefillProblem& pr) {
  std::vector<bool> in(static_cast<size_t>(pr.tokens) * pr.n_q_heads() * pr.D, false);
  for (const PrefillRow& row : pr.rows) {
    if (row.mask != MaskKind::kBlocks || !sm90_small_blocks(row.block_tokens)) continue;
    for (int32_t i = 0; i < row.n_tokens; ++i) {
      const size_t head0 = static_cast<size_t>(row.kv_head) * pr.group;
      const size_t at = (static_cast<size_t>(row.q_row0 + i) * pr.n_q_heads() + head0) * pr.D;
      std::fill_n(in.begin() + static_cast<std::ptrdiff_t>(at), static_cast<size_t>(pr.group) * pr.D, true);
    }
  }
  return in;
}

// Checks one problem: against the CPU twin, and skipping vs the dense run under the expanded mask:
// bit for bit, except the Hopper kernel's kBlocks rows with blocks under its 128-key tiles, whose
// visible key units it gathers into tiles (prefill::next_unit_tile), so that their keys meet
// the online softmax in other groups: those are compared within the tolerance. Every kernel of the
// device is checked, under the key split `split`; returns the fewest split tiles (merge items) any
// kernel's plan had.
size_t check_problem(const PrefillProblem& pr, const std::string& what, const SplitConfig& split = {}) {
  DeviceProblem dp(pr);
  const std::vector<float> ref = reference(pr);
  const std::vector<bool> gathered = gathered_outputs(pr);
  size_t fewest_merges = SIZE_MAX;
  for (const PrefillKernel kernel : device_kernels()) {
    const std::string name = what + " [" + kernel_name(kernel) + "]";
    size_t merges = 0;
    const auto sparse = run_prefill(pr, dp, true, kernel, split, &merges);
    const auto dense = run_prefill(pr, dp, false, kernel, split);
    fewest_merges = std::min(fewest_merges, merges);
    expect_close(sparse, ref, pr.D, name);
    size_t differ = 0;
    std::vector<uint16_t> gathered_sparse;
    std::vector<float> gathered_dense;
    for (size_t i = 0; i < sparse.size(); ++i) {
      if (kernel == PrefillKernel::kWgmma && gathered[i]) {
        gathered_sparse.push_back(sparse[i]);
        gathered_dense.push_back(bf16_to_f32(dense[i]));
      } else {
        differ += sparse[i] != dense[i];
      }
    }
    EXPECT_EQ(differ, 0u) << name << ": tile skipping changed bits against the dense run under the same mask";
    if (!gathered_sparse.empty()) {
      expect_close(gathered_sparse, gathered_dense, pr.D, name + " gathered vs dense run");
    }
  }
  return fewest_merges;
}

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

// The key split (plan_prefill_split): short chunks after long histories, their tiles split along the
// keys into pieces whose partials a merge folds. Pieces start on key-tile multiples of the list (the
// Hopper kernel's gathered units included), the last one takes the new keys, and ragged lists make
// the plan's page estimate too high (pieces past the list, pieces no query sees a key of).
// Every mask; band rows with windows of up to a third of the history (their lists: sink and ring
// pages, which split too once they hold more than a piece's keys). At least one row is not a band
// row, so that some tile holds the whole history and splits.
PrefillProblem make_split_problem(std::mt19937& rng, int32_t D, int32_t P, int32_t group, int32_t max_history) {
  for (;;) {
    ProblemShape sh = shape(D, P, group, rand_int(rng, 1, 3), rand_int(rng, 1, 3), max_history, 100);
    sh.min_history = max_history / 3;
    sh.modes = {Mode::kCausal, Mode::kCausalNewKv, Mode::kBand, Mode::kBlocks};
    sh.block_choices = {16, 32, 48, 64, 128, 256};
    sh.ragged_history = rand_int(rng, 0, 1) == 1;
    sh.sink = rand_int(rng, 1, 3 * P);
    sh.local = rand_int(rng, 4 * P, std::max(4 * P, max_history / 3));
    PrefillProblem pr = make_problem(sh, rng);
    if (std::any_of(pr.rows.begin(), pr.rows.end(), [](const PrefillRow& r) { return r.mask != MaskKind::kBand; })) {
      return pr;
    }
  }
}

// CTAs for a split of pr: at least twice its query tiles, so that its longest tile splits whenever
// it holds more than min_split_keys keys (then pieces of half that tile fit).
int32_t split_ctas(const PrefillProblem& pr, std::mt19937& rng) {
  int32_t tiles = 0;
  for (const PrefillRow& r : pr.rows) tiles += (r.n_tokens * pr.group + kPrefillTileRows - 1) / kPrefillTileRows;
  return 2 * tiles + rand_int(rng, 0, 400);
}

TEST(PrefillAttentionGpu, SmallKeySplitOfShortChunksEveryMask) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(77);
  for (const int32_t D : {64, 128}) {
    for (const int32_t P : {16, 64}) {
      const PrefillProblem pr = make_split_problem(rng, D, P, 4, 900);
      const std::string what = "split D=" + std::to_string(D) + " P=" + std::to_string(P);
      EXPECT_GT(check_problem(pr, what, {.min_split_keys = 128, .split_ctas = split_ctas(pr, rng)}), 0u) << what;
    }
  }
}

// A row with new keys and a list with gaps, split into pieces of 128 keys: the plan's estimate (its
// pages before the chunk) exceeds the list, so its last pieces start past the list's end; the very
// last one sees only the new keys.
TEST(PrefillAttentionGpu, SmallKeySplitPiecesPastAGappyList) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(91);
  ProblemShape sh = shape(128, 64, 4, 1, 1, 900, 20);
  sh.min_history = 900;
  sh.min_chunk = 20;
  sh.modes = {Mode::kCausalNewKv};
  sh.ragged_history = true;  // at least one gap among the entries before the chunk
  const PrefillProblem pr = make_problem(sh, rng);
  const SplitConfig split{.min_split_keys = 128, .split_ctas = 1000};
  PrefillAttention attn({.head_dim = 128, .group = 4, .page_tokens = 64, .min_split_keys = split.min_split_keys,
                         .split_ctas = split.split_ctas});
  attn.plan(pr.rows);
  const auto entries = static_cast<int32_t>(pr.pages[0].ids.size());
  ASSERT_LT(entries, 900 / 64 + 1);
  ASSERT_EQ(attn.merges().size(), 1u);
  EXPECT_GE(attn.merges()[0].pieces, 3);
  const PrefillWorkItem& last = attn.work().back();
  EXPECT_EQ(last.page_end, INT32_MAX);
  EXPECT_GE(last.page_begin, entries) << "the last piece holds only the new keys";
  EXPECT_GT(check_problem(pr, "gappy list", split), 0u);
}

TEST(PrefillAttentionGpu, KeySplitMatchesCpuTwinOverShapes) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937 rng(static_cast<uint32_t>(seed));
  for (const int32_t D : {64, 128}) {
    for (const int32_t P : {16, 32, 64, 128}) {
      for (const int32_t group : {1, 3, 8}) {
        const PrefillProblem pr = make_split_problem(rng, D, P, group, 4000);
        const int32_t min_keys = std::array<int32_t, 3>{128, 256, 1024}[static_cast<size_t>(rand_int(rng, 0, 2))];
        const SplitConfig split{.min_split_keys = min_keys, .split_ctas = split_ctas(pr, rng)};
        const std::string what = "split D=" + std::to_string(D) + " P=" + std::to_string(P) + " group=" +
                                 std::to_string(group) + " min_keys=" + std::to_string(split.min_split_keys) +
                                 " ctas=" + std::to_string(split.split_ctas);
        EXPECT_GT(check_problem(pr, what, split), 0u) << what;
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
}  // namespace sparseserve::kernels::cuda
