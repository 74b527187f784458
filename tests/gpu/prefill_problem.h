// Paged prefill attention test fixtures (tests/gpu/prefill_*_test.cu): random prefill problems on
// the host (varlen chunks after a history, rows of every mask with their page lists, block masks),
// their device copies, the CPU twin's output (kernels/cpu/span_attention.h attend_spans per query)
// and the check every problem goes through: both kernels of the device against the twin, the
// tile-skipping run against the dense run under the same mask, under a given key split.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attention_test_util.h"
#include "common/half.h"
#include "kernels/cpu/block_sparse.h"
#include "kernels/cpu/span_attention.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/prefill_attention.h"

namespace sparseserve::kernels::cuda::prefill_test {

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

inline ProblemShape shape(int32_t D, int32_t P, int32_t group, int32_t n_kv_heads, int32_t batch, int32_t max_history,
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

inline PrefillProblem make_problem(const ProblemShape& sh, std::mt19937& rng) {
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

inline std::vector<cpu::KeySpan> spans_of(const PrefillProblem& pr, size_t r) {
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
inline std::vector<float> reference(const PrefillProblem& pr) {
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
inline std::vector<PrefillKernel> device_kernels() {
  int device = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major == 9 && minor == 0) return {PrefillKernel::kMmaSync, PrefillKernel::kWgmma};
  return {PrefillKernel::kMmaSync};
}

inline std::string kernel_name(PrefillKernel k) { return k == PrefillKernel::kWgmma ? "wgmma" : "mma.sync"; }

// PrefillConfig's key split (min_split_keys, split_ctas); the default is the library's.
struct SplitConfig {
  int32_t min_split_keys = PrefillConfig{}.min_split_keys;
  int32_t split_ctas = 0;
};

inline std::vector<uint16_t> run_prefill(const PrefillProblem& pr, DeviceProblem& dp, bool skip_tiles,
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
inline std::vector<bool> gathered_outputs(const PrefillProblem& pr) {
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
inline size_t check_problem(const PrefillProblem& pr, const std::string& what, const SplitConfig& split = {}) {
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

}  // namespace sparseserve::kernels::cuda::prefill_test
