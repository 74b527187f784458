// The paged read ceilings attention_bench (--read-ceiling) times next to the dense decode: kernels
// that read exactly a decode's K/V pages and compute nothing. Device code: include from .cu files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace sparseserve::kernels::cuda::bench {

using bf16 = __nv_bfloat16;

// The paged read ceiling: copies every list entry's K and V rows (len · D bf16 each, contiguous in
// the pool) into shared memory through a 3-stage cp.async ring and computes nothing. The grid fills
// the GPU once (resident CTAs per SM × SMs: 2 × 132 at P = 64, D = 128, as the decode kernel), each
// CTA a contiguous range of the entries, so a row's pages stay together as in a decode piece. It
// reads exactly the bytes a dense decode reads, from the same pages, without the math, the merge or
// the split: what a paged decode can at best reach on this machine. No L2 policy: with an evict-first
// cache hint on the cp.async this kernel faulted with an illegal instruction (nvcc 13.0; Triton
// disables fractional L2 policies on cp.async for a ptxas bug), as the decode kernel later did too.
constexpr int kReadThreads = 128, kReadStages = 3;

__global__ void __launch_bounds__(kReadThreads) paged_read_kernel(const bf16* k, const bf16* v, const int32_t* ids,
                                                                  const int32_t* len, int32_t entries, int32_t P,
                                                                  int32_t D) {
  extern __shared__ __align__(128) uint8_t smem[];
  const int32_t per = (entries + static_cast<int32_t>(gridDim.x) - 1) / static_cast<int32_t>(gridDim.x);
  const int32_t e0 = static_cast<int32_t>(blockIdx.x) * per, e1 = min(entries, e0 + per);
  const int half = P * D * 2;  // bytes of one page's K (or V) in a stage
  const uint32_t base = attn::smem_addr(smem);
  const auto issue = [&](int32_t e) {
    const uint32_t st = base + static_cast<uint32_t>(((e - e0) % kReadStages) * 2 * half);
    const int64_t off = static_cast<int64_t>(ids[e]) * P * D;
    const auto* kp = reinterpret_cast<const uint8_t*>(k + off);
    const auto* vp = reinterpret_cast<const uint8_t*>(v + off);
    const int bytes = len[e] * D * 2;
    for (int b = static_cast<int>(threadIdx.x) * 16; b < bytes; b += kReadThreads * 16) {
      attn::cp_async16(st + b, kp + b, true);
      attn::cp_async16(st + half + b, vp + b, true);
    }
  };
#pragma unroll
  for (int s = 0; s < kReadStages - 1; ++s) {
    if (e0 + s < e1) issue(e0 + s);
    attn::cp_async_commit();
  }
  for (int32_t e = e0; e < e1; ++e) {
    if (e + kReadStages - 1 < e1) issue(e + kReadStages - 1);
    attn::cp_async_commit();
    attn::cp_async_wait<kReadStages - 1>();  // entry e has landed (nothing reads it)
  }
  attn::cp_async_wait<0>();
}

// The same read by bulk copies (TMA without a tensor map): one thread per CTA keeps kBulkStages
// entries (K and V page each) in flight on one mbarrier per stage and reuses a stage once its copy
// has landed; nothing reads the data. Is the paged read faster by TMA than by cp.async?
constexpr int kBulkStages = 4;
__global__ void __launch_bounds__(32) paged_bulk_read_kernel(const bf16* k, const bf16* v, const int32_t* ids,
                                                             const int32_t* len, int32_t entries, int32_t P,
                                                             int32_t D) {
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ __align__(8) uint64_t bars[kBulkStages];
  if (threadIdx.x != 0) return;
  const int32_t per = (entries + static_cast<int32_t>(gridDim.x) - 1) / static_cast<int32_t>(gridDim.x);
  const int32_t e0 = static_cast<int32_t>(blockIdx.x) * per, e1 = min(entries, e0 + per);
  const uint32_t half = static_cast<uint32_t>(P * D * 2);
  const uint32_t base = attn::smem_addr(smem), bar0 = attn::smem_addr(bars);
  for (int s = 0; s < kBulkStages; ++s) wgmma::mbar_init(bar0 + 8 * s, 1);
  wgmma::mbar_init_fence();
  for (int32_t e = e0; e < e1; ++e) {
    const int32_t i = e - e0, s = i % kBulkStages, use = i / kBulkStages;
    const uint32_t bar = bar0 + 8 * static_cast<uint32_t>(s);
    if (use > 0) wgmma::mbar_wait(bar, static_cast<uint32_t>(use - 1) & 1u);  // the stage's last copy landed
    const int64_t off = static_cast<int64_t>(ids[e]) * P * D;
    const auto bytes = static_cast<uint32_t>(len[e] * D * 2);
    wgmma::mbar_arrive_expect_tx(bar, 2 * bytes);
    const uint32_t st = base + static_cast<uint32_t>(s) * 2 * half;
    wgmma::bulk_load(st, k + off, bytes, bar);
    wgmma::bulk_load(st + half, v + off, bytes, bar);
  }
  for (int32_t i = max(0, e1 - e0 - kBulkStages); i < e1 - e0; ++i) {  // drain
    wgmma::mbar_wait(bar0 + 8 * static_cast<uint32_t>(i % kBulkStages), static_cast<uint32_t>(i / kBulkStages) & 1u);
  }
}

}  // namespace sparseserve::kernels::cuda::bench
