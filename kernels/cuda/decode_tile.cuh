// The paged decode kernel's math (decode_attention.cu): one warp's step over its 16 keys of a K/V tile
// in shared memory, and the reduction of the warps' results at the end of a piece. Device code:
// include from .cu files only.
//
// The math is transposed (GQA as the mma's narrow side): Sᵀ = K·Qᵀ and Oᵀ += Vᵀ·Pᵀ on mma.sync
// m16n8k16 with the warp's 16 keys or 16 dims as the m rows and the group's query heads as the n = 8
// columns (NB = 2 column blocks for groups 9-16), fp32 accumulators, lazy rescaling. Qᵀ stays in
// registers, so every K/V byte is read from memory once per group; Pᵀ reaches the second mma by
// movmatrix. Against heads as the m rows (16 rows, 12 of them empty at group 4) this halves the mma
// count and the accumulators.
#pragma once

#ifndef __CUDACC__
#error "decode_tile.cuh holds device code: include it from .cu files only"
#endif

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/decode_attention.cuh"

namespace sparseserve::kernels::cuda::decode {

// One online-softmax step over a warp's Sᵀ tile: its 16 keys (this thread: keys lane/4 and lane/4 + 8,
// elements 0, 1 and 2, 3) × NB blocks of 8 heads (this thread: heads 8·nb + 2·(lane % 4) + j, elements
// j and j + 2), scores in the log2 domain (−inf = masked). m[nb][j]: the head's running reference
// maximum, the same in the 8 lanes that hold the head; l[nb][j]: this thread's share of the head's
// sum (summed over the 8 lanes at the end); o: Oᵀ accumulators, heads as columns. On return s holds
// exp2(s − m). Lazy rescaling as attn::online_softmax_step, but cheaper to test: each thread checks
// its own scores against the references, and only when one exceeds its reference by more than
// kRescaleSlack are the heads' maxima reduced over their lanes and o, l rescaled.
template <int NB, int DP>
__device__ __forceinline__ void online_softmax_cols(float (&s)[NB][4], float (&m)[NB][2], float (&l)[NB][2],
                                                    float (&o)[DP][NB][4]) {
  bool fits = true;
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
    for (int j = 0; j < 2; ++j) fits = fits && fmaxf(s[nb][j], s[nb][j + 2]) <= m[nb][j] + attn::kRescaleSlack;
  }
  if (!__all_sync(0xffffffffu, fits)) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float mx = fmaxf(m[nb][j], fmaxf(s[nb][j], s[nb][j + 2]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        const float alpha = attn::fast_exp2(m[nb][j] - (mx == -INFINITY ? 0.0f : mx));  // 0 when m was −inf
        m[nb][j] = mx;
        l[nb][j] *= alpha;
#pragma unroll
        for (int dp = 0; dp < DP; ++dp) {
          o[dp][nb][j] *= alpha;
          o[dp][nb][j + 2] *= alpha;
        }
      }
    }
  }
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float base = m[nb][j] == -INFINITY ? 0.0f : m[nb][j];
      s[nb][j] = attn::fast_exp2(s[nb][j] - base);
      s[nb][j + 2] = attn::fast_exp2(s[nb][j + 2] - base);
      l[nb][j] += s[nb][j] + s[nb][j + 2];
    }
  }
}

// The decode state of one warp: Oᵀ accumulators (dims 16·dp + g (+ 8) × heads 8·nb + 2·(lane % 4) +
// {0, 1}, g = lane / 4), and per head the reference maximum m and this thread's share l of the sum.
template <int D, int NB>
struct WarpState {
  float o[D / 16][NB][4];
  float m[NB][2], l[NB][2];
  __device__ __forceinline__ void init() {
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) o[dp][nb][0] = o[dp][nb][1] = o[dp][nb][2] = o[dp][nb][3] = 0.0f;
    }
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) m[nb][0] = m[nb][1] = -INFINITY, l[nb][0] = l[nb][1] = 0.0f;
  }
};

// Loads Qᵀ as mma B fragments (n = 8 heads per block, k = 16 dims) from the Q tile (attn::tile_offset
// layout, rows 0..G-1 the group's heads, the rest zero): qb[ks][nb] holds heads 8·nb .. 8·nb+7 × dims
// 16·ks .. 16·ks+15; an ldmatrix of the tile's rows delivers exactly that.
template <int D, int NB>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qb)[D / 16][NB][2], uint32_t q_tile) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
    for (int kp = 0; kp < D / 32; ++kp) {
      uint32_t r[4];
      attn::ldmatrix_x4(r, q_tile + attn::tile_offset<D>(8 * nb + (lane & 7), 4 * kp + (lane >> 3)));
      qb[2 * kp][nb][0] = r[0];
      qb[2 * kp][nb][1] = r[1];
      qb[2 * kp + 1][nb][0] = r[2];
      qb[2 * kp + 1][nb][1] = r[3];
    }
  }
}

// A lane's ldmatrix addresses inside a K / V tile (attn::tile_offset layout), the same for every tile
// of the warp: k[j] for the K rows of dim block j (Sᵀ = K·Qᵀ), v[j] for the V rows of dim block j
// read transposed (Oᵀ += Vᵀ·Pᵀ). Dim block j + 4a (D = 128) lies 128·a bytes after block j: its
// chunks 8a + b keep the row's swizzle (b ^ (row & 7) for b < 8).
struct TileOffsets {
  uint32_t k[4], v[4];
};
template <int D>
__device__ __forceinline__ TileOffsets tile_offsets(int key0) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  TileOffsets o;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    o.k[j] = attn::tile_offset<D>(key0 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * j + (lane >> 4));
    o.v[j] = attn::tile_offset<D>(key0 + (lane & 7) + ((lane >> 4) << 3), 2 * j + ((lane >> 3) & 1));
  }
  return o;
}

// One warp's step over its 16 keys key0 .. key0+15 of the K / V tiles kt, vt ([64][D],
// attn::tile_offset layout; off = tile_offsets(key0)): Sᵀ = K·Qᵀ, the mask for query position t, the
// online softmax, Oᵀ += Vᵀ·Pᵀ. slice = {x: the first key's position, y: how many of the 16 slots hold
// keys} (consecutive positions from the first; the others are empty, whose V rows must hold finite
// values: their probability is 0, and the copies zero-fill them).
template <int D, int NB>
__device__ __forceinline__ void tile_step(WarpState<D, NB>& st, uint32_t kt, uint32_t vt, int2 slice,
                                          const TileOffsets& off, const uint32_t (&qb)[D / 16][NB][2],
                                          const attn::MaskParams& mp, int32_t t, float scale_log2) {
  const int lane = static_cast<int>(threadIdx.x) & 31, g = lane >> 2;
  // Sᵀ = K·Qᵀ: even and odd dim blocks accumulate apart, two chains of D/32 dependent mma instead of
  // one of D/16.
  float s[NB][4] = {}, s_odd[NB][4] = {};
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    uint32_t a[4];
    attn::ldmatrix_x4(a, kt + off.k[ks & 3] + (ks >> 2) * 128);
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) attn::mma_bf16_16816(ks % 2 ? s_odd[nb] : s[nb], a, qb[ks][nb][0], qb[ks][nb][1]);
  }
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nb][e] += s_odd[nb][e];
  }
  // No skipping of a warp's fully masked rows: decode lists hold only visible keys, so such rows are
  // rare (empty slots of a short page), and the test ahead of the math cost 0.7% at 128K.
  // attn::key_allowed for the two mask kinds decode rows have (causal, band), without branches.
  const bool band = mp.kind == static_cast<int32_t>(MaskKind::kBand);
  const auto seen = [&](int32_t j) { return j <= t && (!band || j < mp.sink || t - j < mp.local); };
  const bool ok_lo = g < slice.y && seen(slice.x + g);
  const bool ok_hi = g + 8 < slice.y && seen(slice.x + g + 8);
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    s[nb][0] = ok_lo ? s[nb][0] * scale_log2 : -INFINITY;
    s[nb][1] = ok_lo ? s[nb][1] * scale_log2 : -INFINITY;
    s[nb][2] = ok_hi ? s[nb][2] * scale_log2 : -INFINITY;
    s[nb][3] = ok_hi ? s[nb][3] * scale_log2 : -INFINITY;
  }
  online_softmax_cols<NB, D / 16>(s, st.m, st.l, st.o);
  // Pᵀ (keys × heads) as the B fragment of Oᵀ += Vᵀ·Pᵀ: the accumulator's 8×8 blocks transposed.
  uint32_t pb[NB][2];
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    pb[nb][0] = attn::movmatrix_trans(attn::pack_bf16x2(s[nb][0], s[nb][1]));
    pb[nb][1] = attn::movmatrix_trans(attn::pack_bf16x2(s[nb][2], s[nb][3]));
  }
#pragma unroll
  for (int dp = 0; dp < D / 16; ++dp) {
    uint32_t a[4];
    attn::ldmatrix_x4_trans(a, vt + off.v[dp & 3] + (dp >> 2) * 128);
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) attn::mma_bf16_16816(st.o[dp][nb], a, pb[nb][0], pb[nb][1]);
  }
}

// The cross-warp reduction of a piece's NW warp states through shared memory `red` (kBytes bytes;
// [warp][16][D + 8] floats of O, unnormalised, rows < G only, then m and l [warp][16]). stage: each
// warp writes its state (the caller then synchronises the warps); combine: head h's 8 output columns
// 8c .. 8c+7, normalised, and its lse (log2 domain, −inf for a head without keys).
template <int D, int NW>
struct WarpReduction {
  static constexpr int kStride = D + 8;  // floats per O row (padding against bank conflicts)
  static constexpr int kBytes = NW * 16 * kStride * 4 + 2 * NW * 16 * 4;

  template <int NB>
  static __device__ __forceinline__ void stage(float* red, const WarpState<D, NB>& st, int group) {
    const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5, g = lane >> 2;
    float* red_o = red;
    float* red_m = red_o + NW * 16 * kStride;
    float* red_l = red_m + NW * 16;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float x = st.l[nb][j];
        x += __shfl_xor_sync(0xffffffffu, x, 4);
        x += __shfl_xor_sync(0xffffffffu, x, 8);
        x += __shfl_xor_sync(0xffffffffu, x, 16);
        const int h = 8 * nb + 2 * (lane & 3) + j;
        if (h < group) {
#pragma unroll
          for (int dp = 0; dp < D / 16; ++dp) {
            red_o[(warp * 16 + h) * kStride + 16 * dp + g] = st.o[dp][nb][j];
            red_o[(warp * 16 + h) * kStride + 16 * dp + 8 + g] = st.o[dp][nb][j + 2];
          }
          if (g == 0) {
            red_m[warp * 16 + h] = st.m[nb][j];
            red_l[warp * 16 + h] = x;
          }
        }
      }
    }
  }

  static __device__ __forceinline__ float combine(const float* red, int h, int c, float (&acc)[8]) {
    const float* red_o = red;
    const float* red_m = red_o + NW * 16 * kStride;
    const float* red_l = red_m + NW * 16;
    float mx = -INFINITY;
#pragma unroll
    for (int v = 0; v < NW; ++v) mx = fmaxf(mx, red_m[v * 16 + h]);
    const float base = mx == -INFINITY ? 0.0f : mx;
    float sum = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] = 0.0f;
#pragma unroll
    for (int v = 0; v < NW; ++v) {
      const float f = attn::fast_exp2(red_m[v * 16 + h] - base);
      sum += f * red_l[v * 16 + h];
      const float* src = red_o + (v * 16 + h) * kStride + 8 * c;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[e] += f * src[e];
    }
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] *= inv;
    return sum > 0.0f ? mx + log2f(sum) : -INFINITY;
  }
};

}  // namespace sparseserve::kernels::cuda::decode
