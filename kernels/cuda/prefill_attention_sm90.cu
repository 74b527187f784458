// Paged prefill attention, Hopper path (sm_90a): the contract of prefill_attention.h, computed with
// warpgroup MMA (wgmma). PrefillAttention::run picks it on compute capability 9.0.
//
// How it works. A CTA of two warpgroups takes the same 128 packed query rows as the mma.sync kernel
// (prefill_attention.cu); warpgroup g owns rows 64g .. 64g+63. Q stays in shared memory; key tiles
// of 128 slots (K and V, each slot's position beside them) are double-buffered with cp.async in the
// 128-byte-swizzled layout wgmma reads (decode_attention.cuh wgmma_tile_offset). Per tile and
// warpgroup: S = Q·Kᵀ (m64n128, both operands from shared memory), the same tile test, exact masks
// and lazy online softmax as the mma.sync kernel on S's registers (wgmma's accumulator layout is
// mma.sync's, repeated over n), then O += P·V with P from registers and V read transposed. Tile
// walk, masks and the output are shared with the mma.sync kernel (prefill_tiles.cuh), so both
// compute the same function; only the summation order inside the MMAs differs.
#include <cmath>

#include "kernels/cuda/prefill_tiles.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace sparseserve::kernels::cuda {

namespace {

using attn::bf16;
using prefill::PrefillParams;
using prefill::TileScan;
using prefill::TileWalk;

constexpr int kThreads = 256;  // two warpgroups
constexpr int kBM = 128;       // packed query rows per CTA (64 per warpgroup)
constexpr int kBN = 128;       // key slots per tile
constexpr int kStages = 2;

template <int D>
struct Sm90Smem {
  static constexpr int kQBytes = kBM * D * 2;  // warpgroup g's 64 rows at g · kQBytes / 2
  static constexpr int kTileBytes = kBN * D * 2;
  static constexpr int kStageOffset = kQBytes;  // stage s: K at + 2s·kTileBytes, V after it
  static constexpr int kPosOffset = kStageOffset + kStages * 2 * kTileBytes;
  static constexpr int kBytes = kPosOffset + kStages * kBN * 4 + 1024;  // + slack to align the base to 1024
};

#ifdef SPARSESERVE_SM90A
template <int D>
__device__ __forceinline__ void mma_pv(float (&o)[D / 8][4], const uint32_t (&a)[4], uint64_t desc) {
  if constexpr (D == 128) {
    wgmma::mma_m64n128k16_rs(reinterpret_cast<float(&)[64]>(o), a, desc);
  } else {
    wgmma::mma_m64n64k16_rs(reinterpret_cast<float(&)[32]>(o), a, desc);
  }
}

// One warpgroup's share of one key tile: S = Q·Kᵀ (64 × 128), masks, online softmax, O += P·V.
// This thread holds rows t[0] (lane/4 of its warp's 16) and t[1] (lane/4 + 8).
template <int D>
__device__ __forceinline__ void attend_tile_sm90(const PrefillParams& p, const TileScan& ts, uint32_t q_wg,
                                                 uint32_t kt, uint32_t vt, const int32_t* tp, bool full,
                                                 const int32_t (&t)[2], float (&m)[2], float (&l)[2],
                                                 float (&o)[D / 8][4]) {
  const int lane = threadIdx.x & 31;
  float s[kBN / 8][4];
  float(&sf)[kBN / 2] = reinterpret_cast<float(&)[kBN / 2]>(s);
  wgmma::fence();
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const uint32_t qa = q_wg + (ks >> 2) * (64 * 128) + (ks & 3) * 32;
    const uint32_t kb = kt + (ks >> 2) * (kBN * 128) + (ks & 3) * 32;
    wgmma::mma_m64n128k16_ss(sf, wgmma::desc_kmajor(qa), wgmma::desc_kmajor(kb), ks > 0 ? 1 : 0);
  }
  wgmma::commit();
  wgmma::wait<0>();
  wgmma::fence_operands(sf);

  const attn::MaskParams& mp = ts.mp;
  if (full) {
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] *= p.scale_log2;
    }
  } else {
    const uint8_t* brow0 = nullptr;
    const uint8_t* brow1 = nullptr;
    if (ts.blocks != nullptr) {
      brow0 = ts.blocks + static_cast<int64_t>(t[0] / mp.block_tokens - ts.first_qblock) * mp.n_kblocks;
      brow1 = ts.blocks + static_cast<int64_t>(t[1] / mp.block_tokens - ts.first_qblock) * mp.n_kblocks;
    }
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int2 kp = *reinterpret_cast<const int2*>(tp + 8 * j + 2 * (lane & 3));
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int32_t jp = h == 0 ? kp.x : kp.y;
        s[j][h] = attn::key_allowed(mp, brow0, t[0], jp) ? s[j][h] * p.scale_log2 : -INFINITY;
        s[j][h + 2] = attn::key_allowed(mp, brow1, t[1], jp) ? s[j][h + 2] * p.scale_log2 : -INFINITY;
      }
    }
  }
  attn::online_softmax_step<kBN / 8, D / 8>(s, m, l, o);

  uint32_t a[kBN / 16][4];
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) {
    a[kk][0] = attn::pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
    a[kk][1] = attn::pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
    a[kk][2] = attn::pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[kk][3] = attn::pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
  float(&of)[D / 2] = reinterpret_cast<float(&)[D / 2]>(o);
  wgmma::fence_operands(of);
  wgmma::fence();
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) {
    // Keys 16kk .. 16kk+15 are rows of V's blocks; the two 64-column blocks are kBN rows apart.
    mma_pv<D>(o, a[kk], wgmma::desc_sw128(vt + kk * 16 * 128, kBN * 128));
  }
  wgmma::commit();
  wgmma::wait<0>();
  wgmma::fence_operands(of);
}
#endif  // SPARSESERVE_SM90A

template <int D>
__global__ void __launch_bounds__(kThreads, 1) prefill_attention_sm90_kernel(const PrefillParams p) {
#ifdef SPARSESERVE_SM90A
  static_assert(kStages == 2, "the pipeline below keeps one tile in flight");
  using Smem = Sm90Smem<D>;
  constexpr int kChunks = D / 8;
  extern __shared__ uint8_t smem_raw[];
  if (static_cast<int32_t>(blockIdx.x) >= p.counts[0]) return;

  const uint32_t raw = attn::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;  // wgmma's swizzle atoms are 1024-byte aligned
  int32_t* pos = reinterpret_cast<int32_t*>(smem_raw + (base - raw) + Smem::kPosOffset);
  const uint32_t q_tile = base;
  const auto k_stage = [&](int s) { return base + Smem::kStageOffset + s * 2 * Smem::kTileBytes; };
  const auto v_stage = [&](int s) { return base + Smem::kStageOffset + s * 2 * Smem::kTileBytes + Smem::kTileBytes; };

  const PrefillWorkItem w = p.work[blockIdx.x];
  const PrefillRow row = p.rows[w.row];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = tid >> 7;
  const int32_t G = p.group, total_m = row.n_tokens * G, m0 = w.m0;
  const auto tok_of = [&](int32_t m) { return min(m, total_m - 1) / G; };

  // This warpgroup's rows and their positions; this thread's two rows.
  const int32_t gm0 = m0 + 64 * wg;
  const bool wg_active = gm0 < total_m;
  const int32_t g_tlo = row.q_pos0 + tok_of(gm0), g_thi = row.q_pos0 + tok_of(gm0 + 63);
  const int32_t r0 = gm0 + 16 * (warp & 3) + (lane >> 2);
  const int32_t t[2] = {row.q_pos0 + tok_of(r0), row.q_pos0 + tok_of(r0 + 8)};

  __shared__ TileScan s_ts;
  __shared__ TileWalk s_walk;
  if (tid == 0) s_ts = prefill::make_tile_scan<kBN, kBM>(p, w, D);
  __syncthreads();
  const bool skip = p.skip_tiles != 0;
  if (warp == 0) {
    const TileWalk wk = prefill::plan_walk<kBN>(s_ts, skip);
    if (lane == 0) s_walk = wk;
  }
  __syncthreads();
  const TileScan& ts = s_ts;

  // Q: packed rows m0 .. m0+127 (rows past the chunk zero), row r in warpgroup r / 64's tile.
  for (int i = tid; i < kBM * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const int32_t m = m0 + r;
    const bool valid = m < total_m;
    const int32_t tok = m / G, h = m - tok * G;
    const bf16* src = p.q + static_cast<int64_t>(row.q_row0 + tok) * p.q_stride +
                      static_cast<int64_t>(row.kv_head * G + h) * D + c * 8;
    const uint32_t off = (r >> 6) * (Smem::kQBytes / 2) + attn::wgmma_tile_offset<D, 64>(r & 63, c);
    attn::cp_async16(q_tile + off, valid ? src : p.q, valid);
  }
  attn::cp_async_commit();

  int32_t cur = prefill::next_tile<kBN>(ts, s_walk, 0, skip);
  if (cur < ts.n_tiles) {
    attn::load_kv_tile<D, kBN, kThreads, true>(k_stage(0), v_stage(0), pos, ts.rk, p.pool, cur * kBN);
  }
  attn::cp_async_commit();
  int32_t nxt = cur < ts.n_tiles ? prefill::next_tile<kBN>(ts, s_walk, cur + 1, skip) : ts.n_tiles;

  float o[D / 8][4];
#pragma unroll
  for (int d = 0; d < D / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const uint32_t q_wg = q_tile + wg * (Smem::kQBytes / 2);

  for (int it = 0; cur < ts.n_tiles; ++it) {
    attn::cp_async_wait<0>();
    wgmma::fence_proxy_async();  // this thread's cp.async data → the async proxy wgmma reads with
    __syncthreads();             // tile `cur` (and Q) visible; every wgmma of the other stage is done
    const int st = it & 1;
    if (nxt < ts.n_tiles) {
      attn::load_kv_tile<D, kBN, kThreads, true>(k_stage(st ^ 1), v_stage(st ^ 1), pos + (st ^ 1) * kBN, ts.rk,
                                                 p.pool, nxt * kBN);
    }
    attn::cp_async_commit();
    if (wg_active) {
      const int32_t* tp = pos + st * kBN;
      prefill::TileUse use{false, false};
      if (skip) use = prefill::classify_tile<kBN>(ts, tp, g_tlo, g_thi);  // uniform over the warpgroup
      if (!use.skip) attend_tile_sm90<D>(p, ts, q_wg, k_stage(st), v_stage(st), tp, use.full, t, m, l, o);
    }
    cur = nxt;
    nxt = nxt < ts.n_tiles ? prefill::next_tile<kBN>(ts, s_walk, nxt + 1, skip) : ts.n_tiles;
  }
  attn::cp_async_wait<0>();

  // Normalise and store (bf16x2 per thread and row).
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = l[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int32_t mr = r0 + 8 * h;
    if (mr >= total_m) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int32_t tok = mr / G, hd = mr - tok * G;
    bf16* dst = p.o + static_cast<int64_t>(row.q_row0 + tok) * p.o_stride +
                static_cast<int64_t>(row.kv_head * G + hd) * D + 2 * (lane & 3);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<uint32_t*>(dst + 8 * j) = attn::pack_bf16x2(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
    }
  }
#endif  // SPARSESERVE_SM90A
}

}  // namespace

namespace prefill {

void prepare_sm90(int32_t head_dim) {
  const void* kernel = head_dim == 64 ? reinterpret_cast<const void*>(&prefill_attention_sm90_kernel<64>)
                                      : reinterpret_cast<const void*>(&prefill_attention_sm90_kernel<128>);
  const int smem = head_dim == 64 ? Sm90Smem<64>::kBytes : Sm90Smem<128>::kBytes;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
}

void launch_sm90(const PrefillParams& p, int32_t grid, int32_t head_dim, cudaStream_t stream) {
  if (head_dim == 64) {
    prefill_attention_sm90_kernel<64><<<grid, kThreads, Sm90Smem<64>::kBytes, stream>>>(p);
  } else {
    prefill_attention_sm90_kernel<128><<<grid, kThreads, Sm90Smem<128>::kBytes, stream>>>(p);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace prefill

}  // namespace sparseserve::kernels::cuda
