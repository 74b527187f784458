// Page selection kernels. How this works:
//   1. page_score_kernel<D>: grid (chunks / 4, rows), 4 warps per CTA; a warp scores a chunk of ≤ 32
//      consecutive blocks of its row (one page index per lane) as tensor-core products. The bound
//      Σ_d max(q_d·kmax_d, q_d·kmin_d) equals Σ_d q⁺_d·kmax_d + q⁻_d·kmin_d (q⁺ = max(q, 0),
//      q⁻ = min(q, 0), exact in bf16), a dot product over 2·D, so for 8 sub-pages at a time one
//      mma.sync m16n8k16 chain gives the bounds of up to 16 query heads (A: [q⁺ | q⁻] of the group,
//      rows ≥ group zero; B: [kmax ; kmin] of the 8 sub-pages, fp32 accumulators). Each lane issues
//      all its 16-byte loads of a tile at once: lane (g, t) = (lane / 4, lane % 4) reads sub-page g's
//      dims 32j + 8t .. +8 for every j, and the same permutation of the reduction dimension is used
//      for A (the sum does not depend on the order of its terms). Maxima over heads and sub-pages
//      then take a few shuffles per tile, and each lane keeps the score of its own block of the chunk.
//      When a CTA's scores are written it adds one to its row's count in row_ready (release).
//   2. page_select_kernel<staged>: one CTA per row, let in by the scoring CTAs right after their
//      programmatic wait; it stages its page ids while the scoring runs and waits for its row's count
//      to be complete (acquire), not for the scoring kernel's exit. The always-kept blocks are known
//      from the row's length and the other blocks' count from the plan, their top `take` comes from
//      block_topk_cutoff over the scores as order keys (staged once in shared memory with the page
//      ids when every row has ≤ kStageKeys blocks, the radix passes then starting at the highest bit
//      where the candidates differ; read from global otherwise), and an ordered compaction (ballots
//      per warp over contiguous index ranges, one barrier) gives every selected block its output slot,
//      ties at the cutoff key taken in block order. It writes the pages, and optionally the block indices and the positions
//      (decode_attention.h's KeyPageList). Its header has no division and its loads are issued before
//      the arithmetic that does not need them: a clock64 probe (H200, batch 1) found the CTA's first
//      2400 cycles spent on the row's geometry, before the first score load.
#include "kernels/cuda/page_select.h"

#include <cuda/atomic>

#include <algorithm>
#include <bit>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/cuda/block_select.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/launch.cuh"

namespace sparseserve::kernels::cuda {

namespace {

constexpr int kScoreWarps = 4;
constexpr int kScoreMaxSpan = 32;  // blocks per warp chunk: one page index per lane
constexpr int kScoreWarpsPerSm = 16;
constexpr int kSelectThreads = 1024;  // 512: batch 1 / 16 selections 15.7 / 82.7 us, 1024: 14.9 / 75.4 (H200)
constexpr int32_t kStageKeys = 8192;  // keys and page ids: 64 KB of shared memory
constexpr int kStagePerThread = kStageKeys / kSelectThreads;
static_assert(kStageKeys % kSelectThreads == 0 && kSelectThreads == 1024);  // 32 warps: one per lane

constexpr unsigned kFull = 0xffffffffu;

// A row's count of finished scoring CTAs (PageSelectArgs::row_ready).
using RowReady = ::cuda::atomic_ref<uint32_t, ::cuda::thread_scope_device>;

// Splits 8 packed bf16 q values into q⁺ (negatives zeroed) and q⁻ (non-negatives zeroed).
__device__ __forceinline__ void split_sign(const uint4& x, uint4& pos, uint4& neg) {
  const auto neg_mask = [](uint32_t w) { return ((w >> 15) & 0x00010001u) * 0xffffu; };
  const uint32_t m[4] = {neg_mask(x.x), neg_mask(x.y), neg_mask(x.z), neg_mask(x.w)};
  pos = make_uint4(x.x & ~m[0], x.y & ~m[1], x.z & ~m[2], x.w & ~m[3]);
  neg = make_uint4(x.x & m[0], x.y & m[1], x.z & m[2], x.w & m[3]);
}

// acc += A · B over 32 permuted dims: rows_g / rows_g8 hold A's rows g / g + 8 at the lane's 8 dims,
// b column g (the lane's sub-page) at the same dims; two k16 steps.
__device__ __forceinline__ void mma_dims32(float (&acc)[4], const uint4& rows_g, const uint4& rows_g8, const uint4& b) {
  const uint32_t a0[4] = {rows_g.x, rows_g8.x, rows_g.y, rows_g8.y};
  const uint32_t a1[4] = {rows_g.z, rows_g8.z, rows_g.w, rows_g8.w};
  attn::mma_bf16_16816(acc, a0, b.x, b.y);
  attn::mma_bf16_16816(acc, a1, b.z, b.w);
}

template <int D>
__global__ void __launch_bounds__(kScoreWarps * 32, 4) page_score_kernel(PageSelectArgs a, int32_t span,
                                                                         int32_t log2_subpages) {
  static_assert(D % 32 == 0);
  constexpr int J = D / 32;  // 32-dim slices
  constexpr int kThreads = kScoreWarps * 32;
  // Programmatic launch (launch.cuh): the plan-time inputs (PageSelectArgs: the row's page list and
  // length, the query's offset) are read before the wait, overlapping the previous kernel's tail; q
  // and the bounds may be its output. Right after the wait the CTA lets page_select_kernel in: its
  // CTAs stage their page ids and wait on row_ready while the scoring runs (H200, batch 1, 128K, with
  // the decode after it: 0.5 us faster than launching it at the scoring's exit).
  const int r = blockIdx.y;
  const int G = a.group;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int32_t first = a.page_indptr[r];
  const int32_t n = a.page_indptr[r + 1] - first;
  const int64_t q_offset = a.q_offset[r];
  const int32_t seq_len = a.seq_lens[r];
  const int32_t chunk_stride = static_cast<int32_t>(gridDim.x) * kScoreWarps;
  // Lane b's page in chunk c (blocks c·span + b), 0 past the row.
  const auto chunk_page = [&](int32_t c) {
    const int32_t b = c * span + lane;
    return lane < span && b < n ? a.page_indices[first + b] : 0;
  };
  int32_t c = static_cast<int32_t>(blockIdx.x) * kScoreWarps + warp;
  int32_t my_page = chunk_page(c);
  pdl_wait();
  pdl_launch_dependents();

  // The group's query heads in shared memory: all loads of a thread issued before its stores.
  __shared__ __align__(16) __nv_bfloat16 qs[kPageSelectMaxGroup * D];
  const __nv_bfloat16* q = a.q + q_offset;
  if ((reinterpret_cast<uintptr_t>(q) & 15) == 0) {
    constexpr int kVecs = (kPageSelectMaxGroup * D / 8 + kThreads - 1) / kThreads;
    const int vecs = G * D / 8;
    uint4 v[kVecs];
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int i = static_cast<int>(threadIdx.x) + k * kThreads;
      if (i < vecs) v[k] = reinterpret_cast<const uint4*>(q)[i];
    }
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int i = static_cast<int>(threadIdx.x) + k * kThreads;
      if (i < vecs) reinterpret_cast<uint4*>(qs)[i] = v[k];
    }
  } else {
    constexpr int kElems = (kPageSelectMaxGroup * D + kThreads - 1) / kThreads;
    __nv_bfloat16 v[kElems];
#pragma unroll
    for (int k = 0; k < kElems; ++k) {
      const int i = static_cast<int>(threadIdx.x) + k * kThreads;
      if (i < G * D) v[k] = q[i];
    }
#pragma unroll
    for (int k = 0; k < kElems; ++k) {
      const int i = static_cast<int>(threadIdx.x) + k * kThreads;
      if (i < G * D) qs[i] = v[k];
    }
  }
  __syncthreads();

  const int g = lane >> 2, t = lane & 3;
  // A fragments, rows g and g + 8 (query heads), for the lane's dims 32j + 8t .. +8.
  uint4 qpos[J][2], qneg[J][2];
#pragma unroll
  for (int j = 0; j < J; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int head = g + 8 * h;
      const uint4 x = head < G ? *reinterpret_cast<const uint4*>(qs + head * D + 32 * j + 8 * t) : make_uint4(0, 0, 0, 0);
      split_sign(x, qpos[j][h], qneg[j][h]);
    }
  }

  const int P = a.config.page_tokens, LP = a.config.logical_page_tokens;
  const int lg = log2_subpages, SP = 1 << lg;
  const int32_t last_tokens = n > 0 ? seq_len - (n - 1) * P : 0;  // no division on the way to the first load
  const bool head_lo = g < G, head_hi = g + 8 < G;
  for (; c * span < n; c += chunk_stride) {
    const int32_t c0 = c * span;
    const int cnt = min(span, n - c0);
    const int32_t next_page = chunk_page(c + chunk_stride);  // prefetch
    // Sub-page f of the chunk (block f >> lg, sub-page f & (SP - 1)) holds tokens.
    const auto col_valid = [&](int f) {
      const int b = f >> lg;
      return b < cnt && (c0 + b < n - 1 || (f & (SP - 1)) * LP < last_tokens);
    };
    float mine = -INFINITY;  // score of block c0 + lane
    const int cols = cnt << lg;
    for (int f0 = 0; f0 < cols; f0 += 8) {
      // B: this lane loads column g = sub-page f0 + g.
      const int f = f0 + g;
      const int32_t page = __shfl_sync(kFull, my_page, (f >> lg) & 31);
      uint4 kmax[J], kmin[J];
      if (col_valid(f)) {
        const int64_t base = (int64_t{page} * SP + (f & (SP - 1))) * D;
        const uint4* mx = reinterpret_cast<const uint4*>(a.kmax + base) + t;
        const uint4* mn = reinterpret_cast<const uint4*>(a.kmin + base) + t;
#pragma unroll
        for (int j = 0; j < J; ++j) {
          kmax[j] = __ldcs(mx + 4 * j);
          kmin[j] = __ldcs(mn + 4 * j);
        }
      } else {
#pragma unroll
        for (int j = 0; j < J; ++j) kmax[j] = kmin[j] = make_uint4(0, 0, 0, 0);
      }
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < J; ++j) {
        mma_dims32(acc, qpos[j][0], qpos[j][1], kmax[j]);
        mma_dims32(acc, qneg[j][0], qneg[j][1], kmin[j]);
      }
      // acc: heads g (0, 1) and g + 8 (2, 3) of columns 2t, 2t + 1. Max over the valid ones.
      float m[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        m[e] = -INFINITY;
        if (col_valid(f0 + 2 * t + e)) {
          if (head_lo) m[e] = acc[e];
          if (head_hi) m[e] = fmaxf(m[e], acc[2 + e]);
        }
      }
      if (SP >= 2) {  // both columns in one block: reduce one value
        m[0] = fmaxf(m[0], m[1]);
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) m[0] = fmaxf(m[0], __shfl_xor_sync(kFull, m[0], o));
        if (SP >= 4) m[0] = fmaxf(m[0], __shfl_xor_sync(kFull, m[0], 1));
        if (SP >= 8) m[0] = fmaxf(m[0], __shfl_xor_sync(kFull, m[0], 2));
        m[1] = m[0];
      } else {
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) {
          m[0] = fmaxf(m[0], __shfl_xor_sync(kFull, m[0], o));
          m[1] = fmaxf(m[1], __shfl_xor_sync(kFull, m[1], o));
        }
      }
      // Lanes t now hold the maximum over their block's columns of the tile (one block per column
      // when SP = 1: m[0] / m[1] for columns 2t / 2t + 1). Lane b takes block b's part of the tile
      // from the lane of the block's first column in it.
      const int pf = lane << lg;
      const bool hit = lane < cnt && pf < f0 + 8 && pf + SP > f0;
      const int fc = max(pf, f0) - f0;
      const float v0 = __shfl_sync(kFull, m[0], (fc >> 1) & 3);
      const float v1 = __shfl_sync(kFull, m[1], (fc >> 1) & 3);
      if (hit) mine = fmaxf(mine, (fc & 1) ? v1 : v0);
    }
    if (lane < cnt) a.scores[first + c0 + lane] = mine;
    my_page = next_page;
  }
  // The CTA's scores are written: one release of the row's count, after every thread's stores.
  __syncthreads();
  if (threadIdx.x == 0) {
    RowReady ready(a.row_ready[r]);
    ready.fetch_add(1u, ::cuda::memory_order_release);
  }
}

// kStaged: every row has ≤ kStageKeys blocks, and their keys and page ids are staged in shared memory;
// otherwise both are read from global memory. sink_pages: sink_block_count(config), clamped to int32.
template <bool kStaged>
__global__ void __launch_bounds__(kSelectThreads) page_select_kernel(PageSelectArgs a, int32_t sink_pages,
                                                                    uint32_t score_ctas) {
  extern __shared__ uint32_t staging[];  // staged: keys [kStageKeys], then page ids [kStageKeys]
  uint32_t* keys = staging;
  int32_t* ids = reinterpret_cast<int32_t*>(staging + kStageKeys);
  __shared__ TopkScratch scratch;
  __shared__ uint2 warp_totals[kSelectThreads / 32];  // the compaction's (sure, tied) counts per warp
  __shared__ uint2 warp_keys[32];  // staged: each warp's smallest and largest candidate key
  // Programmatic launch: the scoring CTAs let this kernel in right after their own wait, so when it
  // starts everything before the scoring in the stream has completed. Its plan (the row's geometry
  // and page ids, the output plan) is read at once, and its outputs may be written (no kernel still
  // running reads them). The scores are new: thread 0 waits until every scoring CTA of the row has
  // released its count in row_ready (acquire), the block behind it at a barrier, and they are then
  // read through L2. Its pdl_wait() comes last, so that it completes after the scoring kernel (what
  // follows sees both). A thread issues all its id loads and all its score loads before it uses
  // any: one memory round trip each, not one per item.
  const int r = blockIdx.x;
  const int32_t first = a.page_indptr[r];
  // A row longer than max_blocks breaks the contract; staged, only its first kStageKeys blocks count.
  const int32_t n = kStaged ? min(a.page_indptr[r + 1] - first, kStageKeys) : a.page_indptr[r + 1] - first;
  const float* sc = a.scores + first;
  int32_t id[kStagePerThread];
  if constexpr (kStaged) {
#pragma unroll
    for (int k = 0; k < kStagePerThread; ++k) {
      const int32_t i = static_cast<int32_t>(threadIdx.x) + k * kSelectThreads;
      if (i < n) id[k] = a.page_indices[first + i];
    }
  }
  // The row's selection: the sink blocks and the newest one, and `take` others; the plan's count
  // (capacity) is selected_page_count(seq_len) by contract, so take needs no division here.
  const int32_t seq_len = a.seq_lens[r];
  const int32_t P = a.config.page_tokens;
  const int32_t out_first = a.selected_indptr[r];
  const int32_t capacity = a.selected_indptr[r + 1] - out_first;
  const int32_t sink_blocks = min(sink_pages, n);
  const int32_t kept = sink_blocks + (sink_blocks < n ? 1 : 0);
  const int32_t rest = sink_blocks < n ? n - 1 - sink_blocks : 0;
  const int32_t take = capacity - kept;
  const auto always = [=](int32_t i) { return i < sink_blocks || i == n - 1; };

  // The row's scores: every scoring CTA of the row has released its count. The count is reset for
  // the next call, whose scoring CTAs add to it only past their own wait, after this kernel has
  // completed. The decode kernel is let in only now: launched at this kernel's start, its CTAs would
  // take the SMs the last scoring CTAs free.
  if (threadIdx.x == 0) {
    RowReady ready(a.row_ready[r]);
    while (ready.load(::cuda::memory_order_acquire) < score_ctas) __nanosleep(32);
    ready.store(0u, ::cuda::memory_order_relaxed);
  }
  topk_reset(scratch);
  __syncthreads();
  pdl_launch_dependents();  // the decode kernel's CTAs may start reading their plan
  // Staged rows: keys and page ids in shared memory, and the candidates' key range, so that the radix
  // select skips the leading bits they all share.
  uint32_t key_min = 0, key_max = 0xffffffffu;
  if constexpr (kStaged) {
    float score[kStagePerThread];
#pragma unroll
    for (int k = 0; k < kStagePerThread; ++k) {
      const int32_t i = static_cast<int32_t>(threadIdx.x) + k * kSelectThreads;
      if (i < n) score[k] = __ldcg(sc + i);
    }
    uint32_t my_lo = 0xffffffffu, my_hi = 0;
#pragma unroll
    for (int k = 0; k < kStagePerThread; ++k) {
      const int32_t i = static_cast<int32_t>(threadIdx.x) + k * kSelectThreads;
      if (i < n) {
        const uint32_t key = order_key(score[k]);
        keys[i] = key;
        ids[i] = id[k];
        if (!always(i)) my_lo = min(my_lo, key), my_hi = max(my_hi, key);
      }
    }
    // Each warp's range, then every warp reduces the warps' ranges itself (no atomics on one word).
    my_lo = __reduce_min_sync(kFull, my_lo);
    my_hi = __reduce_max_sync(kFull, my_hi);
    if ((threadIdx.x & 31) == 0) warp_keys[threadIdx.x >> 5] = make_uint2(my_lo, my_hi);
    __syncthreads();
    const uint2 w = warp_keys[threadIdx.x & 31];
    key_min = __reduce_min_sync(kFull, w.x);
    key_max = __reduce_max_sync(kFull, w.y);
  }
  const auto key = [&](int32_t i) {
    if constexpr (kStaged) {
      return keys[i];
    } else {
      return order_key(__ldcg(sc + i));
    }
  };
  // Candidates: the blocks that are neither sink blocks nor the newest one.
  const TopkCut cut = take <= 0      ? topk_none()
                      : take >= rest ? topk_all()
                                     : block_topk_cutoff(n, take, [&](int32_t i) {
                                         return TopkItem{key(i), !always(i)};
                                       }, scratch, key_min, key_max);

  // The ordered compaction. Warp w owns blocks [w·span, (w + 1)·span) in groups of 32, a block per
  // lane. Selected blocks before block b: the sure ones (always kept, or key above the cutoff) plus
  // the tied ones taken, min(cut.ties, tied ones before b). A warp counts both kinds by ballots, one
  // barrier publishes the warps' totals, and each warp sums those of the warps before it.
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  constexpr int32_t kGroupSpan = kSelectThreads;  // 32 warps × 32 lanes: one group per warp
  const int32_t span = (n + kGroupSpan - 1) / kGroupSpan * 32;
  const int32_t w0 = warp * span, w1 = min(n, w0 + span);
  // (sure, tied) for block i; i < w1.
  const auto classify = [&](int32_t i) {
    if (always(i)) return make_uint2(1u, 0u);
    const uint32_t k = key(i);
    return make_uint2(k > cut.key ? 1u : 0u, k == cut.key ? 1u : 0u);
  };
  uint32_t sure_total = 0, tied_total = 0;
  for (int32_t g = w0; g < w1; g += 32) {  // warp-uniform trip count
    const uint2 f = g + lane < w1 ? classify(g + lane) : make_uint2(0u, 0u);
    sure_total += __popc(__ballot_sync(kFull, f.x != 0));
    tied_total += __popc(__ballot_sync(kFull, f.y != 0));
  }
  if (lane == 0) warp_totals[warp] = make_uint2(sure_total, tied_total);
  __syncthreads();
  const uint2 t = lane < warp ? warp_totals[lane] : make_uint2(0u, 0u);
  uint32_t sure_before = __reduce_add_sync(kFull, t.x), tied_before = __reduce_add_sync(kFull, t.y);
  const uint32_t below = (1u << lane) - 1u;  // lanes before this one
  for (int32_t g = w0; g < w1; g += 32) {
    const int32_t i = g + lane;
    const uint2 f = i < w1 ? classify(i) : make_uint2(0u, 0u);
    const uint32_t sure_mask = __ballot_sync(kFull, f.x != 0), tied_mask = __ballot_sync(kFull, f.y != 0);
    const uint32_t my_tied_before = tied_before + __popc(tied_mask & below);
    const uint32_t pos = sure_before + __popc(sure_mask & below) + min(cut.ties, my_tied_before);
    const bool keep = f.x != 0 || (f.y != 0 && my_tied_before < cut.ties);
    if (keep && pos < static_cast<uint32_t>(capacity)) {
      const int32_t e = out_first + static_cast<int32_t>(pos);
      if constexpr (kStaged) {
        a.selected_pages[e] = ids[i];
      } else {
        a.selected_pages[e] = a.page_indices[first + i];
      }
      if (a.selected_blocks != nullptr) a.selected_blocks[e] = i;
      if (a.selected_pos0 != nullptr) {
        a.selected_pos0[e] = i * P;
        a.selected_len[e] = min(P, seq_len - i * P);
      }
    }
    sure_before += __popc(sure_mask);
    tied_before += __popc(tied_mask);
  }
  pdl_wait();  // completes after the scoring kernel: what follows this kernel sees both
}

constexpr size_t kStagingBytes = 2 * sizeof(uint32_t) * kStageKeys;

// Opts page_select_kernel<true> into kStagingBytes of dynamic shared memory on `device`, once per
// device.
cudaError_t allow_staging_smem(int device) {
  static std::mutex mu;
  static std::vector<bool> done;
  const std::lock_guard<std::mutex> lock(mu);
  const auto d = static_cast<size_t>(device);
  if (d < done.size() && done[d]) return cudaSuccess;
  const cudaError_t err =
      cudaFuncSetAttribute(page_select_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, kStagingBytes);
  if (err == cudaSuccess) {
    if (done.size() <= d) done.resize(d + 1, false);
    done[d] = true;
  }
  return err;
}

}  // namespace

void page_select(const PageSelectArgs& a, cudaStream_t stream, std::source_location loc) {
  const PageSelectConfig c = a.config;
  check_page_select_config(c, "page_select", loc);
  const auto subpages = static_cast<uint32_t>(c.page_tokens / c.logical_page_tokens);
  check(a.rows >= 0 && a.rows <= kPageSelectMaxRows, "page_select: rows must be in [0, kPageSelectMaxRows]", loc);
  check(a.head_dim == 64 || a.head_dim == 128, "page_select: head_dim must be 64 or 128", loc);
  check(a.group >= 1 && a.group <= kPageSelectMaxGroup, "page_select: group must be in [1, 16]", loc);
  check(a.max_blocks >= 0, "page_select: max_blocks must be ≥ 0", loc);
  if (a.rows == 0) return;
  check(a.q != nullptr && a.q_offset != nullptr && a.kmin != nullptr && a.kmax != nullptr &&
            a.page_indptr != nullptr && a.page_indices != nullptr && a.seq_lens != nullptr && a.scores != nullptr &&
            a.selected_indptr != nullptr && a.selected_pages != nullptr && a.row_ready != nullptr,
        "page_select: null pointer", loc);
  check((a.selected_pos0 == nullptr) == (a.selected_len == nullptr),
        "page_select: selected_pos0 and selected_len must both be set or both null", loc);
  check(is_aligned16(a.kmin) && is_aligned16(a.kmax), "page_select: kmin and kmax must be 16-byte aligned", loc);

  // Chunk size: enough warps to fill the GPU about once (every byte of metadata in flight early), up
  // to 32 blocks per warp; a multiple of the blocks in one 8-sub-page tile.
  int device = 0, sms = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice", loc);
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute", loc);
  const int64_t blocks = int64_t{a.rows} * a.max_blocks;
  const int64_t warps = std::max<int64_t>(int64_t{sms} * kScoreWarpsPerSm, 1);
  const int32_t tile_blocks = static_cast<int32_t>(std::max<uint32_t>(1, 8 / subpages));
  int32_t span = static_cast<int32_t>(std::clamp<int64_t>((blocks + warps - 1) / warps, 1, kScoreMaxSpan));
  span = std::min(kScoreMaxSpan, (span + tile_blocks - 1) / tile_blocks * tile_blocks);
  const int32_t chunks = (a.max_blocks + span - 1) / span;
  const int32_t grid_x = std::clamp((chunks + kScoreWarps - 1) / kScoreWarps, 1, 65535);
  const int32_t log2_subpages = std::countr_zero(subpages);
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(a.rows));
  const bool pdl = a.programmatic_launch;
  const auto score_kernel = a.head_dim == 128 ? page_score_kernel<128> : page_score_kernel<64>;
  const auto sink_pages = static_cast<int32_t>(std::min<int64_t>(sink_block_count(c), INT32_MAX));
  const bool staged = a.max_blocks <= kStageKeys;
  // Everything that can fail on the host before the first launch: once the scoring is queued, its
  // counts must be consumed by a selecting kernel or cleared.
  check_cuda(allow_staging_smem(device), "cudaFuncSetAttribute(page_select_kernel)", loc);
  check_cuda(launch_kernel(score_kernel, grid, kScoreWarps * 32, 0, stream, pdl, a, span, log2_subpages),
             "page_score_kernel launch", loc);
  const cudaError_t err =
      launch_kernel(staged ? page_select_kernel<true> : page_select_kernel<false>, a.rows, kSelectThreads,
                    staged ? kStagingBytes : 0, stream, pdl, a, sink_pages, static_cast<uint32_t>(grid_x));
  if (err != cudaSuccess) {  // leave the workspace zero behind the scoring, for the next call
    (void)cudaMemsetAsync(a.row_ready, 0, sizeof(uint32_t) * static_cast<size_t>(a.rows), stream);
  }
  check_cuda(err, "page_select_kernel launch", loc);
}

}  // namespace sparseserve::kernels::cuda
