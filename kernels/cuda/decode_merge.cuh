// The split-row merge of paged decode attention (decode_attention.cu), and the kernel's parameter
// block it reads. A row split into pieces (one CTA each) is combined in two ways:
//   - merge_row: the CTA that finishes the row's last piece (an atomic count per row) folds the
//     pieces' fp32 partials, staged from L2 by bulk copies;
//   - combine_segment: in a thread block cluster launch, the pieces of a row that share a cluster
//     first combine through distributed shared memory, so the global merge sees one partial per
//     cluster, or none when the row lies in one cluster.
// Device code: include from decode_attention.cu only.
#pragma once

#ifndef __CUDACC__
#error "decode_merge.cuh holds device code: include it from .cu files only"
#endif

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace sparseserve::kernels::cuda::decode {

using attn::bf16;

constexpr int kThreads = 128;  // threads per decode CTA
constexpr int kWarps = kThreads / 32;

struct DecodeParams {
  const bf16* q;
  int64_t q_stride;
  bf16* o;
  int64_t o_stride;
  attn::PoolView pool;
  const int32_t* indptr;
  const int32_t* page_ids;
  const int32_t* page_pos0;
  const int32_t* page_len;
  const int32_t* counts;  // {work items, rows}
  const DecodeWorkItem* work;
  const int2* row_split;  // {pieces, first partial}
  const DecodeRow* rows;
  float* partial_o;    // [slot][group][D]
  float* partial_lse;  // [slot][group], log2 domain
  int32_t* row_done;   // [max_rows] pieces of the row finished in this launch; 0 between launches
  int32_t group;
  float scale_log2;    // softmax scale · log2(e)
};

// ---- thread block clusters (sm_90) ----
constexpr int kMaxCluster = 8;  // CTAs per cluster at most (DecodeConfig::cluster_ctas)

// This CTA's rank in its thread block cluster and the cluster's CTA count (0 and 1 without clusters).
struct ClusterPosition {
  int32_t rank = 0, size = 1;
};
__device__ __forceinline__ ClusterPosition cluster_position() {
  ClusterPosition c;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n\tmov.u32 %1, %%cluster_nctarank;\n" : "=r"(c.rank), "=r"(c.size));
#endif
  return c;
}
// All non-exited threads of the cluster: arrive (release: this thread's earlier writes, shared memory
// included, become visible to the threads whose wait follows) and wait (acquire).
__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }
// The shared::cluster address of `addr` (this CTA's shared window) in the CTA of cluster rank `rank`.
__device__ __forceinline__ uint32_t cluster_map(uint32_t addr, uint32_t rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
}
__device__ __forceinline__ float cluster_load(uint32_t addr) {
  float x;
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(x) : "r"(addr) : "memory");
  return x;
}
__device__ __forceinline__ float4 cluster_load4(uint32_t addr) {
  float4 x;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(x.x), "=f"(x.y), "=f"(x.z), "=f"(x.w)
               : "r"(addr)
               : "memory");
  return x;
}

// Pieces of one row at most (the merge keeps a weight per piece and head in shared memory, and a
// lane's share of a head's lse values in registers): plan_decode_split never gives a row more
// pieces than target_ctas, which is held to this.
constexpr int kMaxRowPieces = 640;
constexpr int kMaxSlotPasses = 16 * 128 / 4 / kThreads;  // 4-column slots per thread at most (G = 16, D = 128)

// Combines the pieces of split row `row`: O = Σ_i w_i O_i with w_i = 2^(lse_i − M) / Σ_j 2^(lse_j − M)
// per head (M: the head's largest lse), bf16 out. Called by the CTA that finishes the row's last
// piece (all threads), with the idle pipeline buffers as `buf` and `bar` an mbarrier initialised
// with count 1. The partials of the row's pieces are consecutive slots, so a chunk of pieces (as
// many as fit in buf; usually all of them) is one contiguous block of O, staged by one bulk copy
// (TMA) that is issued first. While it streams, warp w turns the lse values of heads w, w + 4, ...
// into the weights (read from L2, reduced over the lanes). Then a thread owns 4 output columns of
// one head (a slot; G·D/4 of them) and sums its pieces times their weights; with fewer slots than
// threads, `groups` threads share a slot (every groups-th piece each) and add up through buf.
// (Session 7, batch 1, 8K: staging O and lse by cp.async from every thread and folding with a
// running maximum took ~4 us, a quarter of the call.)
template <int D>
__device__ __forceinline__ void merge_row(const DecodeParams& p, const DecodeRow& row, int2 sp, uint8_t* buf,
                                          int buf_bytes, uint32_t bar) {
  const int G = p.group, tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int n_pieces = sp.x, piece_floats = G * D;
  // buf: weights [n_pieces][G], then O [cap][G][D] (16-byte aligned).
  float* w_s = reinterpret_cast<float*>(buf);
  const int w_bytes = (n_pieces * G * 4 + 15) / 16 * 16;
  float* o_s = reinterpret_cast<float*>(buf + w_bytes);
  const int cap = (buf_bytes - w_bytes) / (piece_floats * 4);  // ≥ 1 while n_pieces ≤ kMaxRowPieces
  const float* o_src = p.partial_o + static_cast<int64_t>(sp.y) * piece_floats;
  // Thread 0: the other CTAs' partials (acquired through the row count) and this CTA's earlier
  // generic accesses of buf (ordered by the barrier before) become visible to the bulk copy.
  const auto copy_chunk = [&](int c0) {
    wgmma::fence_proxy_async_global();
    wgmma::fence_proxy_async();
    const auto bytes = static_cast<uint32_t>(min(cap, n_pieces - c0) * piece_floats * 4);
    wgmma::mbar_arrive_expect_tx(bar, bytes);
    wgmma::bulk_load(attn::smem_addr(o_s), o_src + static_cast<int64_t>(c0) * piece_floats, bytes, bar);
  };
  if (tid == 0) copy_chunk(0);
  constexpr int kPerLane = kMaxRowPieces / 32;
  for (int h = warp; h < G; h += kWarps) {
    const float* lse = p.partial_lse + static_cast<int64_t>(sp.y) * G + h;
    float v[kPerLane], mx = -INFINITY;  // pieces lane, lane + 32, ...: one round trip for all loads
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      v[j] = lane + 32 * j < n_pieces ? __ldcg(lse + (lane + 32 * j) * G) : -INFINITY;
      mx = fmaxf(mx, v[j]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    const float base = mx == -INFINITY ? 0.0f : mx;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      v[j] = attn::fast_exp2(v[j] - base);
      sum += v[j];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (lane + 32 * j < n_pieces) w_s[(lane + 32 * j) * G + h] = v[j] * inv;
    }
  }
  __syncthreads();  // the weights are complete

  const int slots = G * D / 4;
  const int groups = max(1, kThreads / slots), per_group = kThreads / groups, grp = tid / per_group;
  float4 acc[kMaxSlotPasses];
#pragma unroll
  for (int k = 0; k < kMaxSlotPasses; ++k) acc[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  uint32_t phase = 0;
  for (int c0 = 0; c0 < n_pieces; c0 += cap) {
    const int n = min(cap, n_pieces - c0);
    wgmma::mbar_wait(bar, phase);
    phase ^= 1;
#pragma unroll
    for (int k = 0; k < kMaxSlotPasses; ++k) {
      const int slot = k * per_group + tid % per_group, h = slot / (D / 4);
      if (slot >= slots || grp >= groups) continue;
#pragma unroll 4
      for (int i = grp; i < n; i += groups) {
        const float wgt = w_s[(c0 + i) * G + h];
        const float4 x = reinterpret_cast<const float4*>(o_s + i * piece_floats)[slot];
        acc[k].x += wgt * x.x, acc[k].y += wgt * x.y, acc[k].z += wgt * x.z, acc[k].w += wgt * x.w;
      }
    }
    __syncthreads();  // the chunk is read before the next one overwrites it
    if (tid == 0 && c0 + cap < n_pieces) copy_chunk(c0 + cap);
  }
  if (groups > 1) {  // then slots ≤ kThreads / 2: only pass 0 holds a slot
    float4* part = reinterpret_cast<float4*>(o_s);
    if (tid % per_group < slots && grp < groups) part[grp * slots + tid % per_group] = acc[0];
    __syncthreads();
    if (tid < slots) {
      for (int g = 1; g < groups; ++g) {
        const float4 x = part[g * slots + tid];
        acc[0].x += x.x, acc[0].y += x.y, acc[0].z += x.z, acc[0].w += x.w;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxSlotPasses; ++k) {
    const int slot = groups > 1 ? (k == 0 ? tid : slots) : k * per_group + tid;
    if (slot >= slots) continue;
    bf16* dst = p.o + row.q_row * p.o_stride + static_cast<int64_t>(row.kv_head * G + slot / (D / 4)) * D +
                4 * (slot % (D / 4));
    *reinterpret_cast<uint2*>(dst) =
        make_uint2(attn::pack_bf16x2(acc[k].x, acc[k].y), attn::pack_bf16x2(acc[k].z, acc[k].w));
  }
}

// Combines the pieces of a split row that lie in this CTA's cluster (its segment: cluster ranks
// first_rank .. first_rank + L − 1, this CTA the j-th), each of whose results (O normalised, lse in
// the log2 domain) is staged in its own shared memory at `stage` (DecodeSmem::kStageOffset). Float4
// slot s of the row's G·D/4 output values is combined by segment CTA s % L, thread s / L, reading all
// L stages through distributed shared memory. The result is the row's output (bf16) when the segment
// holds the whole row (n_seg == 1), else partial slot `slot` (fp32 O and lse) for the global merge.
template <int D>
__device__ __forceinline__ void combine_segment(const DecodeParams& p, const DecodeRow& row, uint32_t stage,
                                                int first_rank, int L, int j, int n_seg, int slot) {
  const int G = p.group, slots = G * D / 4;
  constexpr uint32_t kLseOffset = 16 * D * 4;
  for (int s = j + L * static_cast<int>(threadIdx.x); s < slots; s += L * kThreads) {
    const int h = s / (D / 4), col = 4 * (s % (D / 4));
    float lse[kMaxCluster];
    float4 v[kMaxCluster];
#pragma unroll
    for (int m = 0; m < kMaxCluster; ++m) {  // all loads first: one round trip
      if (m < L) {
        const uint32_t src = cluster_map(stage, static_cast<uint32_t>(first_rank + m));
        lse[m] = cluster_load(src + kLseOffset + 4 * h);
        v[m] = cluster_load4(src + 16 * s);
      }
    }
    float mx = -INFINITY;
#pragma unroll
    for (int m = 0; m < kMaxCluster; ++m) mx = m < L ? fmaxf(mx, lse[m]) : mx;
    const float ref = mx == -INFINITY ? 0.0f : mx;
    float sum = 0.0f;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int m = 0; m < kMaxCluster; ++m) {
      if (m < L) {
        const float wgt = attn::fast_exp2(lse[m] - ref);
        sum += wgt;
        acc.x += wgt * v[m].x, acc.y += wgt * v[m].y, acc.z += wgt * v[m].z, acc.w += wgt * v[m].w;
      }
    }
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    acc.x *= inv, acc.y *= inv, acc.z *= inv, acc.w *= inv;
    if (n_seg == 1) {
      bf16* dst = p.o + row.q_row * p.o_stride + static_cast<int64_t>(row.kv_head * G + h) * D + col;
      *reinterpret_cast<uint2*>(dst) = make_uint2(attn::pack_bf16x2(acc.x, acc.y), attn::pack_bf16x2(acc.z, acc.w));
    } else {
      *reinterpret_cast<float4*>(p.partial_o + (static_cast<int64_t>(slot) * G + h) * D + col) = acc;
      if (col == 0) p.partial_lse[slot * G + h] = sum > 0.0f ? mx + log2f(sum) : -INFINITY;
    }
  }
}

// atomicAdd with release and acquire semantics at GPU scope; returns the old value.
__device__ __forceinline__ int32_t atomic_add_acq_rel_gpu(int32_t* p, int32_t v) {
  int32_t old;
  asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], %2;\n" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}

}  // namespace sparseserve::kernels::cuda::decode
