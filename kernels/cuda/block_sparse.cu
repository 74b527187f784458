// XAttention block selection on the GPU (see block_sparse.h for the contract).
//
// How it works. Row group a holds query positions aS .. aS+S−1, key group c key positions cS ..
// cS+S−1; the estimate of (a, c) is Σ_r q_{aS+S−1−r}·k_{cS+r} over the existing rows r, divided by
// their count, times the scale: a dot product of two S·D vectors, so a (row groups × key groups)
// tile is a GEMM with inner dimension S·D, accumulated as S products of D, one per r (Q rows of
// one r at stride S, keys likewise).
//   1. xattention_bins_kernel (on sm_90a wgmma, each warpgroup 64 packed rows against the stage's
//      128 key groups straight from shared memory; elsewhere mma.sync m16n8k16 in the
//      FlashAttention-2 layout of prefill_attention.cu): a CTA of 8 warps takes 128 packed rows
//      m = (row group, head) of one row and a run of the key-group tiles of 128 (a row's tiles end at
//      its last row group, causal; runs of split_tiles even out the CTAs' work); per tile and r it
//      copies the Q rows and key rows (cp.async, three stages; addresses worked out once per CTA and
//      per tile) and accumulates. The diagonal pair (c = a) counts only its causal pairs (key ≤ row):
//      it is computed beforehand, per row, by plain dot products. At a tile's end each packed row's
//      online softmax moves to the tile's maximum, and the exponentials are summed per key block (the
//      "bins"; a key block of B ≤ 128 tokens never spans two tiles); bins, the tile's maximum and
//      finally the run's maximum and sum go to the workspace.
//   2. xattention_select_kernel, one CTA per query block: each of its packed rows' runs folded into
//      one maximum and sum, the block's masses (Σ over its row groups and heads of each bin rescaled
//      to the row's maximum and divided by its sum), then the selection: blocks 1 .. qb−1 sorted by
//      descending mass (ties: the lower block first) by a bitonic sort of (mass bits, ~block) keys
//      in shared memory, kept in that order by one thread in double, as the twin does, until the
//      kept mass reaches threshold · total.
#include "kernels/cuda/block_sparse.h"

#include <algorithm>
#include <bit>
#include <climits>
#include <cmath>
#include <cstring>

#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace sparseserve::kernels::cuda {

namespace {

using attn::bf16;

constexpr int kThreads = 256;
constexpr int kMT = 1;                         // m16 tiles per warp
constexpr int kBM = kThreads / 32 * kMT * 16;  // packed rows per CTA: 128
constexpr int kBC = 128;                       // key groups per tile
constexpr int kSelectThreads = 256;
constexpr int kMinSplitTiles = 4;  // the shortest run of key-group tiles a CTA takes, unless under a wave
constexpr int kBinsWaves = 8;      // the bins kernel's CTAs: at most this many waves (max_ctas)
constexpr float kLog2e = 1.4426950408889634f;

// A planned row as the kernels read it (the plan blob, int32 units).
struct XRow {
  int32_t q_row0, n_tokens, q_pos0, kv_head, list_row;
  int32_t block_tokens, stride;
  float threshold;
  int32_t a_first;       // first row group: q_pos0 / S
  int32_t split_tiles;   // key-group tiles per run (the plan's, the same in every row)
  int32_t n_splits;      // runs of the last row group's tiles
  int32_t n_groups;      // row groups a_first .. a_first + n_groups − 1
  int32_t n_ctiles;      // key-group tiles of the last row group
  int32_t n_bins;        // bins per packed row: n_ctiles · bins per tile
  int32_t first_qblock, n_qblocks, n_kblocks;
  int32_t pad_;          // (ws 8-byte aligned)
  int64_t ws;            // the row's workspace (floats): bins, tile maxima, then {max, sum} per run
  int64_t out;           // the row's mass / allowed rows
};
static_assert(sizeof(XRow) == 88);
constexpr int kXRowInts = static_cast<int>(sizeof(XRow) / 4);

struct Params {
  const bf16* q;
  int64_t q_stride;
  attn::PoolView pool;
  const int32_t* indptr;
  const int32_t* page_ids;
  const int32_t* page_pos0;
  const int32_t* page_len;
  const int32_t* counts;  // {bins items, select items}
  const XRow* rows;
  const int4* bins_work;    // {row, first packed row, first tile, end tile}
  const int2* select_work;  // {row, query block − first_qblock}
  float* ws;
  float* mass;
  uint8_t* allowed;
  int32_t group;
  float scale_log2;
};

// Key-group columns per bin (cpb = B / S ≤ 128 = kBC: one bin per key block) and bins per tile.
static_assert(kBC >= 128, "a key block (B ≤ 128 tokens, S ≥ 1) must fit in one key-group tile");
__host__ __device__ __forceinline__ int32_t bins_per_tile(int32_t cpb) { return kBC / cpb; }

template <int D>
struct BinsSmem {
  static constexpr int kStages = 3;  // copies of steps it + 1 and it + 2 in flight during step it
  static constexpr int kQBytes = kBM * D * 2;
  static constexpr int kKBytes = kBC * D * 2;
  static constexpr int kStageBytes = kQBytes + kKBytes;
  // 192 KB at D = 128 (one CTA a multiprocessor), + slack to align the stages to 1024 bytes (wgmma)
  static constexpr int kBytes = kStages * kStageBytes + 1024;
};

__device__ __forceinline__ attn::RowKeys row_keys(const Params& p, int32_t r) {
  const int32_t first = p.indptr[r], n = p.indptr[r + 1] - first;
  const int32_t slots = n << p.pool.page_shift;
  return attn::RowKeys{p.page_ids + first, p.page_pos0 + first, p.page_len + first, slots, slots, 0,
                       nullptr, nullptr, 0};
}

// Writes the sums of p over each bin of one packed row (this thread's half h of an m16 tile: columns
// 8j + 2·(lane % 4) + {0, 1}). Every lane of the warp calls it (shuffles); `write` gates the stores.
__device__ __forceinline__ void store_bins(const float (&pr)[kBC / 8][4], int h, int32_t cpb, float* dst, bool write) {
  const int lane = threadIdx.x & 31, q = lane & 3;
  if (cpb == 1) {
#pragma unroll
    for (int j = 0; j < kBC / 8; ++j) {
      if (write) {
        dst[8 * j + 2 * q] = pr[j][2 * h];
        dst[8 * j + 2 * q + 1] = pr[j][2 * h + 1];
      }
    }
    return;
  }
  if (cpb == 2 || cpb == 4) {
#pragma unroll
    for (int j = 0; j < kBC / 8; ++j) {
      float x = pr[j][2 * h] + pr[j][2 * h + 1];
      if (cpb == 4) x += __shfl_xor_sync(0xffffffffu, x, 1);
      const int col = 8 * j + 2 * q;
      if (write && (cpb == 2 || (q & 1) == 0)) dst[col / cpb] = x;
    }
    return;
  }
  // cpb ≥ 8: sums of 8 columns (every quad lane gets them), then cpb / 8 of those per bin.
  const int per = cpb / 8;
  float acc = 0.0f;
#pragma unroll
  for (int j = 0; j < kBC / 8; ++j) {
    float x = pr[j][2 * h] + pr[j][2 * h + 1];
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    acc += x;
    if ((j + 1) % per == 0) {
      const int b = j / per;
      if (write && (b & 3) == q) dst[b] = acc;
      acc = 0.0f;
    }
  }
}

// Where chunk c of row `row` of a stage's Q or key tile ([128][D] bf16) lies: on sm_90a the layout
// wgmma reads (128-byte swizzle), otherwise the one warp_qk's ldmatrix reads.
template <int D>
__device__ __forceinline__ uint32_t stage_offset(int row, int chunk) {
#ifdef SPARSESERVE_SM90A
  static_assert(kBM == 128 && kBC == 128);
  return attn::wgmma_tile_offset<D, 128>(row, chunk);
#else
  return attn::tile_offset<D>(row, chunk);
#endif
}

#ifdef SPARSESERVE_SM90A
// s += Q·Kᵀ for warpgroup wg's 64 packed rows against the stage's 128 key rows (fp32 accumulators in
// the mma.sync layout of the warp's 16 rows); issued, not waited for.
template <int D>
__device__ __forceinline__ void issue_qk(float (&s)[kBC / 8][4], uint32_t q_tile, int wg, uint32_t k_tile) {
  float(&sf)[kBC / 2] = reinterpret_cast<float(&)[kBC / 2]>(s);
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const uint32_t qa = q_tile + wg * (64 * 128) + (ks >> 2) * (kBM * 128) + (ks & 3) * 32;
    const uint32_t kb = k_tile + (ks >> 2) * (kBC * 128) + (ks & 3) * 32;
    wgmma::mma_m64n128k16_ss(sf, wgmma::desc_kmajor(qa), wgmma::desc_kmajor(kb), 1);
  }
}
#endif

template <int D>
__global__ void __launch_bounds__(kThreads, 1) xattention_bins_kernel(const Params p) {
  using Smem = BinsSmem<D>;
  constexpr int kChunks = D / 8;
  extern __shared__ __align__(16) uint8_t smem[];  // stages aligned to 1024 bytes below
  if (static_cast<int32_t>(blockIdx.x) >= p.counts[0]) return;
  const int4 w = p.bins_work[blockIdx.x];
  const XRow row = p.rows[w.x];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int32_t G = p.group, S = row.stride, m0 = w.y, ct0 = w.z, total_m = row.n_groups * G;
  const int32_t L = row.q_pos0 + row.n_tokens, cpb = row.block_tokens / S;
  const attn::RowKeys rk = row_keys(p, row.list_row);
  const int32_t n_ct = w.w - ct0;  // tiles ct0 .. w.w − 1, none past the CTA's last row group
  float* bins = p.ws + row.ws;
  float* tile_max = bins + static_cast<int64_t>(total_m) * row.n_bins;
  float* stats = tile_max + static_cast<int64_t>(total_m) * row.n_ctiles;

  // This thread's rows (m-tile mt, half h): packed row, row group, valid rows of the group → scale.
  const int32_t wm0 = m0 + kMT * 16 * warp;
  const bool warp_active = wm0 < total_m;
  const int32_t warp_last_a = row.a_first + min(wm0 + kMT * 16, total_m) / G;  // ≥ the warp's last group
  int32_t pm[kMT][2], ga[kMT][2];
  float inv[kMT][2], diag[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int32_t m = wm0 + 16 * mt + 8 * h + (lane >> 2);
      pm[mt][h] = m;
      const int32_t a = row.a_first + min(m, total_m - 1) / G, g = min(m, total_m - 1) % G;
      ga[mt][h] = a;
      // Rows of the group that exist: positions in [max(aS, q_pos0), min(aS + S, L)).
      const int32_t lo = max(a * S, row.q_pos0), hi = min(a * S + S, L);
      inv[mt][h] = p.scale_log2 / static_cast<float>(max(hi - lo, 1));
      // The diagonal pair: r with key aS + r ≤ row aS + S − 1 − r, each quad lane a quarter of D.
      float sum = 0.0f;
      int32_t cnt = 0;
      for (int32_t r = 0; 2 * r <= S - 1; ++r) {
        const int32_t pos = a * S + S - 1 - r;
        if (pos < row.q_pos0 || pos >= L) continue;
        ++cnt;
        const bf16* kp;
        const bf16* vp;
        (void)attn::locate_slot<D>(rk, p.pool, a * S + r, kp, vp);
        const bf16* qp = p.q + static_cast<int64_t>(row.q_row0 + pos - row.q_pos0) * p.q_stride +
                         static_cast<int64_t>(row.kv_head * G + g) * D;
#pragma unroll 4
        for (int d = (lane & 3) * (D / 4); d < (lane & 3) * (D / 4) + D / 4; d += 2) {
          const float2 qf = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(qp + d));
          const float2 kf = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(kp + d));
          sum = fmaf(qf.x, kf.x, fmaf(qf.y, kf.y, sum));
        }
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      diag[mt][h] = cnt > 0 ? sum / static_cast<float>(cnt) * p.scale_log2 : -INFINITY;
    }
  }

  const uint32_t base = (attn::smem_addr(smem) + 1023u) & ~1023u;
  const auto q_stage = [&](int st) { return base + st * Smem::kStageBytes; };
  const auto k_stage = [&](int st) { return base + st * Smem::kStageBytes + Smem::kQBytes; };
  // The copies' addresses, worked out once: a thread always copies chunk c of the same Q rows
  // (packed rows tid / kChunks + k·kRowStep) and of the same tile rows j (likewise).
  constexpr int kRowStep = kThreads / kChunks;
  constexpr int kQCopies = kBM / kRowStep, kKCopies = kBC / kRowStep;
  const int c = tid % kChunks, row_in = tid / kChunks;
  // Q: the token of packed row m's group at r = 0 (aS + S − 1, relative to the chunk; far below 0
  // for rows past the chunk) and the element offset of its head's chunk.
  int32_t q_tok[kQCopies], q_col[kQCopies];
#pragma unroll
  for (int k = 0; k < kQCopies; ++k) {
    const int32_t m = m0 + row_in + k * kRowStep;
    q_tok[k] = m < total_m ? (row.a_first + m / G) * S + S - 1 - row.q_pos0 : INT32_MIN / 2;
    q_col[k] = (row.kv_head * G + m % G) * D + c * 8;
  }
  // Keys: when a key group never crosses a page (S ≤ P), the group's S keys are consecutive rows of
  // one page, so per tile each copied row j needs one lookup: the row of key r = 0 and how many of
  // the group's keys exist (slot u holds position u < L). Otherwise every copy locates its slot.
  const bool group_in_page = S <= (1 << p.pool.page_shift);
  const bf16* k_src[kKCopies];
  int32_t k_cnt[kKCopies];
  int32_t k_tile_ready = -1;
  const auto locate_groups = [&](int32_t ct) {
#pragma unroll
    for (int k = 0; k < kKCopies; ++k) {
      const bf16* kp;
      const bf16* vp;
      const int32_t u = (ct * kBC + row_in + k * kRowStep) * S;
      const int32_t pos = attn::locate_slot<D>(rk, p.pool, u, kp, vp);
      const int32_t in_page = pos == attn::kNoKey ? 0 : __ldg(rk.page_len + (u >> p.pool.page_shift)) -
                                                            (u & ((1 << p.pool.page_shift) - 1));
      k_src[k] = kp + c * 8;
      k_cnt[k] = pos == attn::kNoKey ? 0 : min(in_page, L - pos);
    }
    k_tile_ready = ct;
  };
  // Q rows of r for the CTA's packed rows (rows outside the chunk zero), keys of r for tile ct.
  const auto load = [&](int st, int32_t ct, int32_t r) {
#pragma unroll
    for (int k = 0; k < kQCopies; ++k) {
      const int32_t tok = q_tok[k] - r;
      const bool valid = static_cast<uint32_t>(tok) < static_cast<uint32_t>(row.n_tokens);
      const bf16* src = p.q + static_cast<int64_t>(row.q_row0 + tok) * p.q_stride + q_col[k];
      attn::cp_async16(q_stage(st) + stage_offset<D>(row_in + k * kRowStep, c), valid ? src : p.q, valid);
    }
    if (group_in_page) {
      if (ct != k_tile_ready) locate_groups(ct);
#pragma unroll
      for (int k = 0; k < kKCopies; ++k) {
        const bool valid = r < k_cnt[k];
        attn::cp_async16(k_stage(st) + stage_offset<D>(row_in + k * kRowStep, c),
                         valid ? k_src[k] + r * D : p.pool.k, valid);
      }
      return;
    }
#pragma unroll
    for (int k = 0; k < kKCopies; ++k) {
      const int j = row_in + k * kRowStep;
      const bf16* kp;
      const bf16* vp;
      const int32_t pos = attn::locate_slot<D>(rk, p.pool, (ct * kBC + j) * S + r, kp, vp);
      const bool valid = pos != attn::kNoKey && pos < L;
      attn::cp_async16(k_stage(st) + stage_offset<D>(j, c), valid ? kp + c * 8 : p.pool.k, valid);
    }
  };

  float s[kMT][kBC / 8][4];
  float mrun[kMT][2], lrun[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int j = 0; j < kBC / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
    mrun[mt][0] = mrun[mt][1] = -INFINITY;
    lrun[mt][0] = lrun[mt][1] = 0.0f;
  }

  // Step it = (tile ct0 + it / S, r = it % S); kStages − 1 steps' copies in flight ahead of it.
  constexpr int kStages = Smem::kStages;
  const int lg_s = __ffs(S) - 1;  // S is a power of two
  const int32_t n_it = n_ct << lg_s;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < n_it) load(st, ct0 + (st >> lg_s), st & (S - 1));
    attn::cp_async_commit();
  }
  for (int32_t it = 0; it < n_it; ++it) {
    attn::cp_async_wait<kStages - 2>();
#ifdef SPARSESERVE_SM90A
    wgmma::fence_proxy_async();  // this thread's copies of step it, visible to wgmma
#endif
    __syncthreads();  // step it's stage visible to all; step it − 1's stage free
    const int st = it % kStages;
    const int32_t ct = ct0 + (it >> lg_s), r = it & (S - 1);
    // A warp whose row groups all precede the tile has nothing in it (the reduction reads no bin of it).
    const bool busy = warp_active && ct * kBC <= warp_last_a;
#ifdef SPARSESERVE_SM90A
    // wgmma (per warpgroup, on every step: a branch around it would serialize the MMAs) runs while
    // the copies of step it + kStages − 1 are issued; rows without work in the tile are not read.
    float(&sf)[kBC / 2] = reinterpret_cast<float(&)[kBC / 2]>(s[0]);
    wgmma::fence_operands(sf);
    wgmma::fence();
    issue_qk<D>(s[0], q_stage(st), warp >> 2, k_stage(st));
    wgmma::commit();
#endif
    const int32_t next = it + kStages - 1;
    if (next < n_it) load(next % kStages, ct0 + (next >> lg_s), next & (S - 1));
    attn::cp_async_commit();
#ifdef SPARSESERVE_SM90A
    wgmma::wait<0>();
    wgmma::fence_operands(sf);
#else
    if (busy) attn::warp_qk<D, kMT, kBC>(s, q_stage(st), kMT * 16 * warp, k_stage(st));
#endif
    if (r != S - 1) continue;
    if (busy) {
      // The tile's scores: scaled below the diagonal, the diagonal's own value, −inf above.
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int j = 0; j < kBC / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int h = e >> 1;
            const int32_t c = ct * kBC + 8 * j + 2 * (lane & 3) + (e & 1);
            const int32_t a = ga[mt][h];
            s[mt][j][e] = c < a ? s[mt][j][e] * inv[mt][h] : (c == a ? diag[mt][h] : -INFINITY);
          }
        }
        float mx[2] = {mrun[mt][0], mrun[mt][1]};
        attn::quad_row_max<kBC / 8>(s[mt], mx);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float ref = mx[h] == -INFINITY ? 0.0f : mx[h];
          lrun[mt][h] *= attn::fast_exp2(mrun[mt][h] - ref);
          mrun[mt][h] = mx[h];
#pragma unroll
          for (int j = 0; j < kBC / 8; ++j) {
            s[mt][j][2 * h] = attn::fast_exp2(s[mt][j][2 * h] - ref);
            s[mt][j][2 * h + 1] = attn::fast_exp2(s[mt][j][2 * h + 1] - ref);
            lrun[mt][h] += s[mt][j][2 * h] + s[mt][j][2 * h + 1];
          }
          const int32_t m = pm[mt][h];
          const bool write = m < total_m && ct * kBC <= ga[mt][h];
          store_bins(s[mt], h, cpb, bins + static_cast<int64_t>(min(m, total_m - 1)) * row.n_bins +
                                        ct * bins_per_tile(cpb), write);
          if (write && (lane & 3) == 0) tile_max[static_cast<int64_t>(m) * row.n_ctiles + ct] = mx[h];
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int j = 0; j < kBC / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
    }
  }
  attn::cp_async_wait<0>();
  if (!warp_active) return;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = lrun[mt][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int32_t m = pm[mt][h];
      if (m < total_m && (lane & 3) == 0) {
        float* run = stats + 2 * (static_cast<int64_t>(m) * row.n_splits + ct0 / row.split_tiles);
        run[0] = mrun[mt][h];
        run[1] = l;
      }
    }
  }
}

// Shared memory of the selection: masses [n_kblocks] (float), then sort keys [next pow2] (uint64).
__host__ __device__ __forceinline__ int64_t select_keys_offset(int32_t n_kblocks) {
  return (static_cast<int64_t>(n_kblocks) * 4 + 7) / 8 * 8;
}

__global__ void __launch_bounds__(kSelectThreads) xattention_select_kernel(const Params p) {
  extern __shared__ __align__(16) uint8_t smem[];
  if (static_cast<int32_t>(blockIdx.x) >= p.counts[1]) return;
  const int2 w = p.select_work[blockIdx.x];
  const XRow row = p.rows[w.x];
  const int tid = threadIdx.x;
  const int32_t G = p.group, S = row.stride, nk = row.n_kblocks, qb = row.first_qblock + w.y;
  const int32_t per = row.block_tokens / S;  // row groups per query block = key groups per key block
  const int32_t a_lo = max(row.a_first, qb * per), a_hi = min(row.a_first + row.n_groups, qb * per + per) - 1;
  const int32_t total_m = row.n_groups * G;
  const float* bins = p.ws + row.ws;
  const float* tile_max = bins + static_cast<int64_t>(total_m) * row.n_bins;
  float* stats = p.ws + row.ws + static_cast<int64_t>(total_m) * (row.n_bins + row.n_ctiles);
  float* mass_s = reinterpret_cast<float*>(smem);
  auto* keys = reinterpret_cast<unsigned long long*>(smem + select_keys_offset(nk));
  float* mass_out = p.mass != nullptr ? p.mass + row.out + static_cast<int64_t>(w.y) * nk : nullptr;

  // 0. Each packed row of the block: its runs' maxima and sums folded into its first run's (read
  // below by plain loads: this CTA wrote them).
  for (int32_t i = tid; i < (a_hi - a_lo + 1) * G; i += kSelectThreads) {
    const int32_t a = a_lo + i / G;
    float* run = stats + 2 * (static_cast<int64_t>(a - row.a_first) * G + i % G) * row.n_splits;
    const int32_t n_runs = a / kBC / row.split_tiles + 1;  // the runs holding the row group's tiles
    float mx = -INFINITY, sum = 0.0f;
    for (int32_t k = 0; k < n_runs; ++k) mx = fmaxf(mx, run[2 * k]);
    for (int32_t k = 0; mx > -INFINITY && k < n_runs; ++k) sum += run[2 * k + 1] * exp2f(run[2 * k] - mx);
    run[0] = mx;
    run[1] = sum;
  }
  __syncthreads();
  // 1. Masses of key blocks 0 .. qb (later blocks 0).
  for (int32_t kb = tid; kb < nk; kb += kSelectThreads) {
    float acc = 0.0f;
    for (int32_t a = a_lo; kb <= qb && a <= a_hi; ++a) {
      for (int32_t g = 0; g < G; ++g) {
        const int64_t m = static_cast<int64_t>(a - row.a_first) * G + g;
        const float mfin = stats[2 * m * row.n_splits], l = stats[2 * m * row.n_splits + 1];
        if (!(l > 0.0f)) continue;
        const float inv_l = 1.0f / l;
        const float* mb = bins + m * row.n_bins;
        const float* mm = tile_max + m * row.n_ctiles;
        const int32_t t = kb * per / kBC;  // the key block's tile (a key block never spans two)
        if (t * kBC > a) continue;
        acc += __ldg(mb + kb) * exp2f(__ldg(mm + t) - mfin) * inv_l;
      }
    }
    mass_s[kb] = acc;
    if (mass_out != nullptr) mass_out[kb] = acc;
  }
  // 2. Sort blocks 1 .. qb − 1 by descending mass, the lower block first on ties: keys (mass bits,
  // ~block) in descending order (masses are ≥ 0, so their bits order as the values); 0 pads.
  const int32_t n_sort = max(qb - 1, 0);
  const int32_t n_pow = n_sort <= 1 ? 1 : 1 << (32 - __clz(n_sort - 1));
  __syncthreads();
  for (int32_t i = tid; i < n_pow; i += kSelectThreads) {
    keys[i] = i < n_sort ? (static_cast<unsigned long long>(__float_as_uint(mass_s[i + 1])) << 32) |
                               (0xffffffffu - static_cast<uint32_t>(i + 1))
                         : 0ull;
  }
  __syncthreads();
  for (int32_t k = 2; k <= n_pow; k <<= 1) {
    for (int32_t j = k >> 1; j > 0; j >>= 1) {
      for (int32_t i = tid; i < n_pow; i += kSelectThreads) {
        const int32_t ij = i ^ j;
        if (ij <= i) continue;
        const unsigned long long x = keys[i], y = keys[ij];
        if ((i & k) == 0 ? x < y : x > y) {
          keys[i] = y;
          keys[ij] = x;
        }
      }
      __syncthreads();
    }
  }
  // 3. The mask row: 0 and qb, then blocks in sorted order while kept < threshold · total.
  uint8_t* out = p.allowed + row.out + static_cast<int64_t>(w.y) * nk;
  for (int32_t kb = tid; kb < nk; kb += kSelectThreads) out[kb] = kb == 0 || kb == qb ? 1 : 0;
  __syncthreads();
  if (tid != 0) return;
  double total = 0.0;
  for (int32_t kb = 0; kb <= qb; ++kb) total += static_cast<double>(mass_s[kb]);
  double kept = static_cast<double>(mass_s[0]) + (qb > 0 ? static_cast<double>(mass_s[qb]) : 0.0);
  const double want = static_cast<double>(row.threshold) * total;
  for (int32_t i = 0; i < n_sort; ++i) {
    if (total <= 0.0 || kept >= want) break;
    const auto kb = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(keys[i] & 0xffffffffull));
    out[kb] = 1;
    kept += static_cast<double>(mass_s[kb]);
  }
}

template <int D>
void* bins_kernel() {
  return reinterpret_cast<void*>(&xattention_bins_kernel<D>);
}

int64_t select_smem_bytes(int32_t n_kblocks) {
  const int64_t n_pow = std::bit_ceil(static_cast<uint64_t>(std::max(n_kblocks, 1)));
  return select_keys_offset(n_kblocks) + 8 * n_pow;
}

// Per row: the device row (without offsets) and its workspace floats.
struct RowPlan {
  XRow x;
  int64_t ws_floats;
};

// Key-group tiles of the packed-row chunk starting at m0 (up to its last row group).
int32_t chunk_tiles(const XRow& x, int64_t m0, int32_t group) {
  const int64_t last = std::min<int64_t>(m0 + kBM, int64_t{x.n_groups} * group) - 1;
  return static_cast<int32_t>((x.a_first + last / group) / kBC + 1);
}

// Sets the row's runs of split_tiles key-group tiles and its workspace floats.
void set_split(RowPlan& plan, int32_t group, int32_t split_tiles) {
  XRow& x = plan.x;
  x.split_tiles = split_tiles;
  x.n_splits = (x.n_ctiles + split_tiles - 1) / split_tiles;
  plan.ws_floats = int64_t{x.n_groups} * group * (x.n_bins + x.n_ctiles + 2 * x.n_splits);
}

// The row's plan with runs of kMinSplitTiles tiles (plan() may change them: set_split).
RowPlan plan_row(const BlockMassRow& r, int32_t group, const std::source_location& loc) {
  const int32_t B = r.block_tokens, S = r.stride;
  check(r.n_tokens >= 1 && r.q_pos0 >= 0 && r.q_row0 >= 0 && r.kv_head >= 0 && r.list_row >= 0,
        "XAttentionSelect::plan: rows need n_tokens ≥ 1 and non-negative q_row0, q_pos0, kv_head, list_row", loc);
  check(B == 16 || B == 32 || B == 64 || B == 128, "XAttentionSelect::plan: block_tokens must be 16, 32, 64 or 128",
        loc);
  check(S >= 1 && std::has_single_bit(static_cast<uint32_t>(S)) && B % S == 0,
        "XAttentionSelect::plan: stride must be a power of two dividing block_tokens", loc);
  check(r.threshold > 0.0f && r.threshold <= 1.0f, "XAttentionSelect::plan: threshold must be in (0, 1]", loc);
  const int64_t L = int64_t{r.q_pos0} + r.n_tokens;
  check(L + int64_t{kBC} * S < INT32_MAX, "XAttentionSelect::plan: positions past int32", loc);
  XRow x{};
  x.q_row0 = r.q_row0;
  x.n_tokens = r.n_tokens;
  x.q_pos0 = r.q_pos0;
  x.kv_head = r.kv_head;
  x.list_row = r.list_row;
  x.block_tokens = B;
  x.stride = S;
  x.threshold = r.threshold;
  x.a_first = r.q_pos0 / S;
  const auto a_last = static_cast<int32_t>((L - 1) / S);
  x.n_groups = a_last - x.a_first + 1;
  x.n_ctiles = a_last / kBC + 1;
  x.n_bins = x.n_ctiles * bins_per_tile(B / S);
  x.first_qblock = r.q_pos0 / B;
  x.n_qblocks = static_cast<int32_t>((L - 1) / B) - x.first_qblock + 1;
  x.n_kblocks = static_cast<int32_t>((L + B - 1) / B);
  check(x.n_kblocks <= kMaxMaskKeyBlocks, "XAttentionSelect::plan: a row has more key blocks than kMaxMaskKeyBlocks",
        loc);
  RowPlan plan{x, 0};
  set_split(plan, group, kMinSplitTiles);
  return plan;
}

}  // namespace

XAttentionSelect::XAttentionSelect(const XAttentionConfig& config, std::source_location loc) : config_(config) {
  check(config.head_dim == 64 || config.head_dim == 128, "XAttentionSelect: head_dim must be 64 or 128", loc);
  check(config.group >= 1 && config.group <= 64, "XAttentionSelect: group must be 1..64", loc);
  const int32_t P = config.page_tokens;
  check(P == 16 || P == 32 || P == 64 || P == 128, "XAttentionSelect: page_tokens must be 16, 32, 64 or 128", loc);
  check(config.max_ctas >= 0, "XAttentionSelect: max_ctas must be ≥ 0", loc);
  if (config.max_ctas > 0) {
    max_ctas_ = config.max_ctas;
  } else {
    int device = 0, sms = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    max_ctas_ = kBinsWaves * sms;  // waves of one resident CTA a multiprocessor (longer runs: no faster)
  }
  const int smem = config.head_dim == 64 ? BinsSmem<64>::kBytes : BinsSmem<128>::kBytes;
  CUDA_CHECK(cudaFuncSetAttribute(config.head_dim == 64 ? bins_kernel<64>() : bins_kernel<128>(),
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(&xattention_select_kernel),
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(select_smem_bytes(kMaxMaskKeyBlocks))));
  plan_uploaded_ = CudaEvent(cudaEventDisableTiming, loc);
}

// A row of n tokens ending at L ≤ max_len has ⌈n / S⌉ + 1 row groups at most, n_ctiles ≤ T = (max_len −
// 1) / S / kBC + 1, n_bins = n_ctiles · bins_per_tile and n_splits ≤ n_ctiles (set_split); so the
// rows' groups add up to at most tokens / S + 2 · rows, each with T · (bins_per_tile + 3) floats.
int64_t XAttentionSelect::workspace_floats_bound(int32_t group, int32_t block_tokens, int32_t stride, int64_t rows,
                                                 int64_t tokens, int64_t max_len) {
  if (rows <= 0 || tokens <= 0 || max_len <= 0) return 0;
  const int64_t S = stride, T = (max_len - 1) / S / kBC + 1;
  const int64_t groups = (tokens + S - 1) / S + 2 * rows;
  return int64_t{group} * groups * T * (bins_per_tile(block_tokens / stride) + 3);
}

// n_qblocks ≤ ⌈n / B⌉ + 1 and n_kblocks ≤ ⌈max_len / B⌉ per row.
int64_t XAttentionSelect::mask_bytes_bound(int32_t block_tokens, int64_t rows, int64_t tokens, int64_t max_len) {
  if (rows <= 0 || tokens <= 0 || max_len <= 0) return 0;
  const int64_t B = block_tokens;
  return ((tokens + B - 1) / B + 2 * rows) * ((max_len + B - 1) / B);
}

XAttentionSelect::~XAttentionSelect() {
  if (plan_uploaded_.get() != nullptr) (void)cudaEventSynchronize(plan_uploaded_.get());
}

void XAttentionSelect::plan(std::span<const BlockMassRow> rows, cudaStream_t stream, std::source_location loc) {
  check(rows.size() < INT32_MAX / kXRowInts, "XAttentionSelect::plan: too many rows", loc);
  const int32_t G = config_.group;
  std::vector<XRow> xs;
  std::vector<BlockMaskGeometry> geometry;
  xs.reserve(rows.size());
  geometry.reserve(rows.size());
  // Bins items, the most expensive first (cost: their tiles).
  struct Item {
    int32_t cost, row, m0, ct0, ct1;
  };
  std::vector<Item> items;
  std::vector<int32_t> select;  // {row, query block index} pairs
  int64_t ws = 0, out = 0;
  int32_t max_kb = 0;
  // Runs of split_tiles tiles: the shortest (kMinSplitTiles, doubled) that keeps the bins kernel
  // within max_ctas CTAs; long runs cost less per tile, short runs balance the causal triangle.
  // Where those runs fill less than a wave (a short chunk after a long context: a cached prefix's
  // rest, a decode-sized chunk), shorter runs, down to one tile, as long as they fit in one wave:
  // each CTA reads its tiles' keys in turn, so a few CTAs over a long context are slow.
  std::vector<RowPlan> plans;
  for (const BlockMassRow& r : rows) plans.push_back(plan_row(r, G, loc));
  const auto runs = [&](int32_t split) {
    int64_t n = 0;
    for (const RowPlan& rp : plans) {
      for (int64_t m0 = 0; m0 < int64_t{rp.x.n_groups} * G; m0 += kBM) {
        n += (chunk_tiles(rp.x, m0, G) + split - 1) / split;
      }
    }
    return n;
  };
  int32_t split = kMinSplitTiles;
  while (runs(split) > max_ctas_ && split < (1 << 20)) split *= 2;
  if (split == kMinSplitTiles) {
    const int64_t wave = max_ctas_ / kBinsWaves;
    while (split > 1 && runs(split / 2) <= wave) split /= 2;
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    RowPlan& rp = plans[i];
    set_split(rp, G, split);
    rp.x.ws = ws;
    rp.x.out = out;
    ws += rp.ws_floats;
    geometry.push_back({out, rp.x.first_qblock, rp.x.n_qblocks, rp.x.n_kblocks});
    out += int64_t{rp.x.n_qblocks} * rp.x.n_kblocks;
    max_kb = std::max(max_kb, rp.x.n_kblocks);
    const int64_t packed = int64_t{rp.x.n_groups} * G;
    check(packed < INT32_MAX, "XAttentionSelect::plan: row groups · group past int32", loc);
    for (int64_t m0 = 0; m0 < packed; m0 += kBM) {
      const int32_t tiles = chunk_tiles(rp.x, m0, G);
      for (int32_t ct0 = 0; ct0 < tiles; ct0 += split) {
        const int32_t ct1 = std::min(tiles, ct0 + split);
        items.push_back({ct1 - ct0, static_cast<int32_t>(i), static_cast<int32_t>(m0), ct0, ct1});
      }
    }
    for (int32_t qi = 0; qi < rp.x.n_qblocks; ++qi) {
      select.push_back(static_cast<int32_t>(i));
      select.push_back(qi);
    }
    xs.push_back(rp.x);
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });
  check(items.size() + select.size() / 2 < INT32_MAX / 4, "XAttentionSelect::plan: too many work items", loc);

  const size_t rows_off = 4, bins_off = (rows_off + kXRowInts * xs.size() + 3) / 4 * 4;  // int4 items
  const size_t select_off = bins_off + 4 * items.size(), total = select_off + select.size();
  planned_rows_ = -1;  // from here a failure leaves no plan
  CUDA_CHECK(cudaEventSynchronize(plan_uploaded_.get()));
  if (total > plan_host_.size()) {
    const size_t cap = std::max(total, plan_host_.size() * 2);
    plan_host_.reset();
    plan_host_ = PinnedBuffer<int32_t>(cap, loc);
  }
  if (total > plan_dev_.size()) {
    CUDA_CHECK(cudaDeviceSynchronize());  // a running kernel may still read the old plan
    plan_dev_ = DeviceBuffer<int32_t>(std::max(total, plan_dev_.size() * 2), loc);
  }
  int32_t* host = plan_host_.data();
  host[0] = static_cast<int32_t>(items.size());
  host[1] = static_cast<int32_t>(select.size() / 2);
  host[2] = host[3] = 0;
  std::memcpy(host + rows_off, xs.data(), sizeof(XRow) * xs.size());
  for (size_t k = 0; k < items.size(); ++k) {
    int32_t* item = host + bins_off + 4 * k;
    item[0] = items[k].row;
    item[1] = items[k].m0;
    item[2] = items[k].ct0;
    item[3] = items[k].ct1;
  }
  std::memcpy(host + select_off, select.data(), sizeof(int32_t) * select.size());
  CUDA_CHECK(cudaMemcpyAsync(plan_dev_.data(), host, sizeof(int32_t) * total, cudaMemcpyHostToDevice, stream));
  CUDA_CHECK(cudaEventRecord(plan_uploaded_.get(), stream));
  geometry_ = std::move(geometry);
  bins_items_ = static_cast<int32_t>(items.size());
  select_items_ = static_cast<int32_t>(select.size() / 2);
  max_kblocks_ = max_kb;
  mask_bytes_ = out;
  workspace_floats_ = ws;
  planned_rows_ = static_cast<int32_t>(rows.size());
}

void XAttentionSelect::run(const XAttentionArgs& args, cudaStream_t stream, std::source_location loc) const {
  check(planned_rows_ >= 0, "XAttentionSelect::run: no plan (plan() was not called or failed)", loc);
  const int32_t D = config_.head_dim;
  // check_attention_args wants an output: q stands in for it (nothing is written through it).
  const attn::PoolView pool =
      attn::check_attention_args("XAttentionSelect::run", args.kv, D, config_.page_tokens, args.q, args.q_stride,
                                 args.q, args.q_stride, args.pages, planned_rows_ > 0, args.scale, loc);
  check(planned_rows_ == 0 || (args.workspace != nullptr && args.allowed != nullptr),
        "XAttentionSelect::run: null workspace or allowed", loc);
  if (planned_rows_ == 0) return;
  const int32_t* blob = plan_dev_.data();
  Params p;
  p.q = args.q;
  p.q_stride = args.q_stride;
  p.pool = pool;
  p.indptr = args.pages.indptr;
  p.page_ids = args.pages.page_ids;
  p.page_pos0 = args.pages.page_pos0;
  p.page_len = args.pages.page_len;
  p.counts = blob;
  p.rows = reinterpret_cast<const XRow*>(blob + 4);
  p.bins_work = reinterpret_cast<const int4*>(blob + (4 + kXRowInts * planned_rows_ + 3) / 4 * 4);
  p.select_work = reinterpret_cast<const int2*>(p.bins_work + bins_items_);
  p.ws = args.workspace;
  p.mass = args.mass;
  p.allowed = args.allowed;
  p.group = config_.group;
  p.scale_log2 = args.scale * kLog2e;
  if (D == 64) {
    xattention_bins_kernel<64><<<bins_items_, kThreads, BinsSmem<64>::kBytes, stream>>>(p);
  } else {
    xattention_bins_kernel<128><<<bins_items_, kThreads, BinsSmem<128>::kBytes, stream>>>(p);
  }
  CUDA_CHECK_LAUNCH();
  xattention_select_kernel<<<select_items_, kSelectThreads, select_smem_bytes(max_kblocks_), stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace sparseserve::kernels::cuda
