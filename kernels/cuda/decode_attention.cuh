// Device building blocks of the paged attention kernels (decode_attention.cu, prefill_attention.cu):
// cp.async / ldmatrix / mma.sync m16n8k16 bf16 wrappers, the swizzled shared-memory tile layout,
// the key slot space of a row, and the mask predicate (the CPU twin's rule, DESIGN.md §5).
// Device code: include from .cu files only.
#pragma once

#ifndef __CUDACC__
#error "decode_attention.cuh holds device code: include it from .cu files only"
#endif

#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/decode_attention.h"

namespace sparseserve::kernels::cuda::attn {

using bf16 = __nv_bfloat16;

// Position stored for a slot that holds no key; it fails j ≤ t for every query, so it is masked.
constexpr int32_t kNoKey = INT_MAX;

// ---- async copies, ldmatrix, mma ----------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global → shared copy; when !valid, writes 16 zero bytes and reads nothing (src must still
// be a mapped address).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
// (No L2 cache-hint variant: with `cp.async ... .L2::cache_hint` and an evict-first policy, ptxas of
// nvcc 13.0 produced code that faulted with an illegal instruction, in the decode loop and in a copy
// benchmark kernel alike; Triton disables such hints for a ptxas bug. The hint was worth ≤ 0.4%.)
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Transposes an 8×8 b16 matrix held in mma fragment layout (this lane: row lane/4, columns
// 2·(lane%4)+{0,1}): returns the same lane's elements of the transpose.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// d += a · b for one m16n8k16 tile, bf16 inputs, fp32 accumulators (PTX fragment layouts: a row g =
// lane/4 and g+8, columns 2·(lane%4)+{0,1} and +8; b column lane/4, rows 2·(lane%4)+{0,1} and +8;
// d rows g, g+8, columns 2·(lane%4)+{0,1}).
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats → bf16x2 register (lo in the low half), round to nearest even.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// 2^x on the special function unit; 2^-inf = +0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---- tiles in shared memory ---------------------------------------------------------------------

// A [rows][D] bf16 tile is stored as 16-byte chunks; chunk c of row r lives at chunk index
// r*(D/8) + (c ^ (r & 7)). The XOR spreads the 8 rows an ldmatrix reads at one logical chunk over
// 8 distinct 16-byte bank groups (D/8 ≥ 8 for D = 64, 128), so ldmatrix and cp.async are
// conflict-free.
template <int D>
__device__ __forceinline__ uint32_t tile_offset(int row, int chunk) {
  return static_cast<uint32_t>((row * (D / 8) + (chunk ^ (row & 7))) * 16);
}

// The layout the wgmma kernels read (wgmma.cuh): a [ROWS][D] tile as D/64 blocks of [ROWS][64], each
// row 128 bytes with chunk c at c ^ (row & 7) (the 128-byte swizzle); the tile 1024-byte aligned.
template <int D, int ROWS>
__device__ __forceinline__ uint32_t wgmma_tile_offset(int row, int chunk) {
  return static_cast<uint32_t>(((chunk >> 3) * ROWS + row) * 128 + (((chunk & 7) ^ (row & 7)) * 16));
}

// s += Q·Kᵀ for one warp: MT m16 tiles of query rows row0 + 16·mt .. of a [rows][D] tile against the
// BN key rows of a [BN][D] tile (both laid out by tile_offset); s[mt][j] is the mma accumulator of
// keys 8j .. 8j + 7.
template <int D, int MT, int BN>
__device__ __forceinline__ void warp_qk(float (&s)[MT][BN / 8][4], uint32_t q_tile, int row0, uint32_t k_tile) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    uint32_t qa[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      ldmatrix_x4(qa[mt],
                  q_tile + tile_offset<D>(row0 + 16 * mt + (lane & 7) + ((lane >> 3) & 1) * 8, 2 * ks + (lane >> 4)));
    }
#pragma unroll
    for (int np = 0; np < BN / 16; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, k_tile + tile_offset<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * ks + ((lane >> 3) & 1)));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_bf16_16816(s[mt][2 * np], qa[mt], b[0], b[1]);
        mma_bf16_16816(s[mt][2 * np + 1], qa[mt], b[2], b[3]);
      }
    }
  }
}

// ---- the keys of one row --------------------------------------------------------------------------

// A row's keys as slots: slot u < page_slots is slot u % P of list entry u / P; slots page_slots ..
// end_slot-1 are the contiguous "new" keys (prefill: the chunk's own K/V, row i at k_new + i*stride,
// position new_pos0 + i), later than every page key.
struct RowKeys {
  const int32_t* page_ids;   // the row's first list entry
  const int32_t* page_pos0;
  const int32_t* page_len;
  int32_t page_slots;        // entries × P
  int32_t end_slot;          // page_slots + new keys
  int32_t new_pos0;
  const bf16* k_new;         // already at the row's first new key and KV head
  const bf16* v_new;
  int64_t new_stride;        // elements between consecutive new keys
};

struct PoolView {
  const bf16* k;
  const bf16* v;
  int32_t page_shift;  // log2(P)
};

// Host: the argument checks both attention families' run() make (pool geometry equals the config,
// q / o / pool non-null and 16-byte aligned, strides positive multiples of 8 elements, a page list
// when rows are planned, a positive finite scale); throws InternalError "<who>: ..." naming loc.
// Returns the pool as the kernels read it.
PoolView check_attention_args(const char* who, const PagedKvPool& kv, int32_t head_dim, int32_t page_tokens,
                              const void* q, int64_t q_stride, const void* o, int64_t o_stride,
                              const KeyPageList& pages, bool rows_planned, float scale, std::source_location loc);

// A read of a row's list entries: through L1 (__ldg), or for reads made before a programmatic wait
// (kL2Only) from L2 alone (__ldcg), so that no L1 line can keep a value of the same cache line that
// the previous kernel is still writing (another row's entries, read later through L1).
template <bool kL2Only>
__device__ __forceinline__ int32_t list_load(const int32_t* p) {
  if constexpr (kL2Only) {
    return __ldcg(p);
  } else {
    return __ldg(p);
  }
}

// Where slot u's K/V rows are and the key's position; kNoKey (and the pool base as a harmless address
// for the zero-filling copy) when the slot holds no key.
template <int D>
__device__ __forceinline__ int32_t locate_slot(const RowKeys& rk, const PoolView& pool, int32_t u, const bf16*& kp,
                                               const bf16*& vp) {
  kp = pool.k;
  vp = pool.v;
  if (u >= rk.end_slot) return kNoKey;
  if (u < rk.page_slots) {
    const int32_t e = u >> pool.page_shift, off = u & ((1 << pool.page_shift) - 1);
    if (off >= __ldg(rk.page_len + e)) return kNoKey;
    const int64_t prow = (static_cast<int64_t>(__ldg(rk.page_ids + e)) << pool.page_shift) + off;
    kp = pool.k + prow * D;
    vp = pool.v + prow * D;
    return __ldg(rk.page_pos0 + e) + off;
  }
  const int64_t i = u - rk.page_slots;
  kp = rk.k_new + i * rk.new_stride;
  vp = rk.v_new + i * rk.new_stride;
  return rk.new_pos0 + static_cast<int32_t>(i);
}

// Where a tile of BN slots starting at u0 comes from, read ahead of its copies so that the page
// metadata loads (entry id, length, position) are off the copy issue's critical path. `one_entry`:
// the tile lies inside one page entry (P ≥ BN); then k/v point at its first slot's rows, `valid`
// slots from there hold keys and the first has position pos0. Otherwise the copies locate each slot.
struct TileSource {
  const bf16* k;
  const bf16* v;
  int32_t valid, pos0;
  bool one_entry;
};

template <int D, int BN>
__device__ __forceinline__ TileSource tile_source(const RowKeys& rk, const PoolView& pool, int32_t u0) {
  const int32_t pmask = (1 << pool.page_shift) - 1;
  TileSource ts{pool.k, pool.v, 0, 0, false};
  if (u0 + BN <= rk.page_slots && (u0 & pmask) + BN <= pmask + 1) {
    const int32_t e = u0 >> pool.page_shift, off0 = u0 & pmask;
    const int64_t row0 = (static_cast<int64_t>(__ldg(rk.page_ids + e)) << pool.page_shift) + off0;
    ts = TileSource{pool.k + row0 * D, pool.v + row0 * D, __ldg(rk.page_len + e) - off0,
                    __ldg(rk.page_pos0 + e) + off0, true};
  }
  return ts;
}

// Issues the cp.async copies of slots u0 .. u0+BN-1 into a K tile and a V tile ([BN][D], swizzled)
// and writes each slot's key position (kNoKey for empty slots, whose K/V rows are zero-filled) to
// pos[0..BN). All kThreads threads take part; the caller commits the group. src = tile_source(u0),
// possibly read earlier.
template <int D, int BN, int kThreads>
__device__ __forceinline__ void load_kv_tile(uint32_t k_tile, uint32_t v_tile, int32_t* pos, const RowKeys& rk,
                                             const PoolView& pool, int32_t u0, const TileSource& src) {
  constexpr int kChunks = D / 8, kRowsPerPass = kThreads / kChunks, kPasses = BN / kRowsPerPass;
  static_assert(kThreads % kChunks == 0 && BN % kRowsPerPass == 0);
  const int tid = static_cast<int>(threadIdx.x) % kThreads;  // the loading threads are kThreads in a row
  const int c = tid % kChunks, r0 = tid / kChunks;
  if (src.one_entry) {
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int s = r0 + i * kRowsPerPass;
      const bool valid = s < src.valid;
      const uint32_t off = tile_offset<D>(s, c);
      cp_async16(k_tile + off, valid ? src.k + s * D + c * 8 : pool.k, valid);
      cp_async16(v_tile + off, valid ? src.v + s * D + c * 8 : pool.v, valid);
      if (c == 0) pos[s] = valid ? src.pos0 + s : kNoKey;
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int s = r0 + i * kRowsPerPass;
    const bf16* kp;
    const bf16* vp;
    const int32_t p = locate_slot<D>(rk, pool, u0 + s, kp, vp);
    const bool valid = p != kNoKey;
    const uint32_t off = tile_offset<D>(s, c);
    cp_async16(k_tile + off, valid ? kp + c * 8 : kp, valid);
    cp_async16(v_tile + off, valid ? vp + c * 8 : vp, valid);
    if (c == 0) pos[s] = p;
  }
}

template <int D, int BN, int kThreads>
__device__ __forceinline__ void load_kv_tile(uint32_t k_tile, uint32_t v_tile, int32_t* pos, const RowKeys& rk,
                                             const PoolView& pool, int32_t u0) {
  load_kv_tile<D, BN, kThreads>(k_tile, v_tile, pos, rk, pool, u0, tile_source<D, BN>(rk, pool, u0));
}

// ---- masks ----------------------------------------------------------------------------------------

// Per-row mask parameters (kBlocks: `block_row` is the allowed row of the query's block).
struct MaskParams {
  int32_t kind;  // MaskKind
  int32_t sink, local;
  int32_t block_tokens, n_kblocks;
};

// DESIGN.md §5 for one (query t, key j) pair; j = kNoKey (an empty slot) always fails.
__device__ __forceinline__ bool key_allowed(const MaskParams& m, const uint8_t* block_row, int32_t t, int32_t j) {
  if (j > t) return false;
  if (m.kind == static_cast<int32_t>(MaskKind::kBand)) return j < m.sink || t - j < m.local;
  if (m.kind == static_cast<int32_t>(MaskKind::kBlocks)) {
    const int32_t kb = j / m.block_tokens;
    return kb < m.n_kblocks && block_row[kb] != 0;
  }
  return true;
}

// ---- online softmax -------------------------------------------------------------------------------

// One online-softmax step for a warp's 16 query rows (this thread: rows lane/4 and lane/4 + 8) over
// NB blocks of 8 keys in mma accumulator layout. s: scores already scaled to the log2 domain
// (−inf = masked). On return s holds exp2(s − m) (the probabilities to multiply with V) for the
// running reference maxima m, and the thread-partial row sums l and the output accumulators o are
// consistent with m. Lazy rescaling: while no row's maximum exceeds its reference by more than
// kRescaleSlack, the reference stays and o, l are not touched (probabilities ≤ 2^kRescaleSlack, exact
// in bf16/fp32 range; O = Σ p v / Σ p does not depend on the reference). Rows with no key so far keep
// m = −inf, l = 0, o = 0.
constexpr float kRescaleSlack = 8.0f;

// Folds this thread's scores into mx (rows lane/4 and lane/4 + 8), then takes the maximum over the
// lane quad that holds each row: every lane of the quad gets the row's maximum.
template <int NB>
__device__ __forceinline__ void quad_row_max(const float (&s)[NB][4], float (&mx)[2]) {
#pragma unroll
  for (int j = 0; j < NB; ++j) {
    mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
    mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
  }
}

// o's rows (mma accumulator layout: elements 0, 1 in row lane/4, 2, 3 in row lane/4 + 8) times alpha.
template <int DB>
__device__ __forceinline__ void rescale_rows(float (&o)[DB][4], const float (&alpha)[2]) {
#pragma unroll
  for (int d = 0; d < DB; ++d) {
    o[d][0] *= alpha[0];
    o[d][1] *= alpha[0];
    o[d][2] *= alpha[1];
    o[d][3] *= alpha[1];
  }
}

template <int NB, int DB>
__device__ __forceinline__ void online_softmax_step(float (&s)[NB][4], float (&m)[2], float (&l)[2],
                                                    float (&o)[DB][4]) {
  float mx[2] = {m[0], m[1]};
  quad_row_max(s, mx);
  // Warp-uniform: keep every row's reference, or move every row's reference to its new maximum.
  const bool keep = __all_sync(0xffffffffu, mx[0] <= m[0] + kRescaleSlack && mx[1] <= m[1] + kRescaleSlack);
  if (!keep) {
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      alpha[r] = fast_exp2(m[r] - (mx[r] == -INFINITY ? 0.0f : mx[r]));  // 0 when m was −inf
      m[r] = mx[r];
      l[r] *= alpha[r];
    }
    rescale_rows(o, alpha);
  }
  const float base[2] = {m[0] == -INFINITY ? 0.0f : m[0], m[1] == -INFINITY ? 0.0f : m[1]};
#pragma unroll
  for (int j = 0; j < NB; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j][e] = fast_exp2(s[j][e] - base[e >> 1]);
      l[e >> 1] += s[j][e];
    }
  }
}

}  // namespace sparseserve::kernels::cuda::attn
