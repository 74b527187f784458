// Decode attention test fixtures (tests/gpu/decode_*_test.cu): random paged decode problems on the
// host (pool, queries, rows and their page lists of every kind), their device copies and the CPU
// twin's output (kernels/cpu/span_attention.h attend_spans).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attention_test_util.h"
#include "common/half.h"
#include "kernels/cpu/span_attention.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.h"

namespace sparseserve::kernels::cuda::decode_test {

using namespace gpu_test;  // Bf16Array, RowPages, HostPageLists, random_bf16, rand_int, expect_close

namespace cpu = kernels::cpu;
using bf16 = __nv_bfloat16;

enum class RowKind { kAll, kSelected, kStreaming, kStreamingFullList, kEmpty };

struct RowSpec {
  RowKind kind = RowKind::kAll;
  int32_t len = 1;        // context tokens (query at position len - 1)
  int32_t sink = 0, local = 0;
  int32_t select_sink = 0;  // kSelected: blocks holding positions < select_sink are always kept
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
inline RowPages build_pages(const RowSpec& s, int32_t P, int32_t& next_id, std::mt19937& rng) {
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

inline int32_t pages_needed(const RowSpec& s, int32_t P) {
  if (s.kind == RowKind::kEmpty || s.len == 0) return 0;
  const int32_t nb = (s.len + P - 1) / P;
  if (s.kind == RowKind::kStreaming) return (s.sink + P - 1) / P + (s.local + P - 1) / P + 1;
  return nb;
}

// Makes key j of row r score about `score` (natural units) for the row's first query head, so that
// including or excluding it moves the output far beyond rounding: the mask's edges become visible.
inline void spike_key(DecodeProblem& pr, size_t r, int32_t j, float score) {
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
inline DecodeProblem make_problem(int32_t D, int32_t P, int32_t group, int32_t n_kv_heads, int32_t batch,
                                  int32_t max_len, const std::vector<RowKind>& kinds, std::mt19937& rng,
                                  int32_t min_len = 1) {
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
    const HostPageLists lists(pr.pages);
    for (const RowPages& rp : pr.pages) row_pages.push_back(static_cast<int32_t>(rp.ids.size()));
    const size_t n = std::max<size_t>({lists.ids.size(), list_capacity, 1});
    indptr = DeviceBuffer<int32_t>(std::max(lists.indptr.size(), row_capacity + 1));
    ids = DeviceBuffer<int32_t>(n);
    pos0 = DeviceBuffer<int32_t>(n);
    len = DeviceBuffer<int32_t>(n);
    indptr.upload(lists.indptr);
    ids.upload(lists.ids);
    pos0.upload(lists.pos0);
    len.upload(lists.len);
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
inline std::vector<float> reference(const DecodeProblem& pr) {
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

inline std::vector<uint16_t> run_decode(DecodeAttention& attn, const DecodeProblem& pr, DeviceProblem& dp) {
  dp.o.fill_bytes(0xff);
  attn.plan(pr.rows, dp.row_pages);
  attn.run(dp.args(pr));
  CUDA_CHECK(cudaDeviceSynchronize());
  return dp.o.download<uint16_t>();
}

// The pool slots past each entry's page_len set to NaN in the copy the kernel reads: their bits must
// not reach the output (the copies zero-fill such rows).
inline void poison_empty_slots(DecodeProblem& pr) {
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

// Renumbers the pool's pages so that every row's last list entry lies in the pool's top pages (the
// data moves with the ids); returns the first of them.
inline int32_t last_entries_to_top(DecodeProblem& pr) {
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
      const auto from = static_cast<std::ptrdiff_t>(static_cast<size_t>(id) * page);
      const auto to = static_cast<std::ptrdiff_t>(static_cast<size_t>(new_id[static_cast<size_t>(id)]) * page);
      std::copy_n(a->bits.begin() + from, page, moved.bits.begin() + to);
      std::copy_n(a->f.begin() + from, page, moved.f.begin() + to);
    }
    *a = std::move(moved);
  }
  for (RowPages& rp : pr.pages) {
    for (int32_t& id : rp.ids) id = new_id[static_cast<size_t>(id)];
  }
  return top;
}

}  // namespace sparseserve::kernels::cuda::decode_test
