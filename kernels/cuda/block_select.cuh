// Device helpers shared by page selection and sampling: block-wide scans and the "top of an order"
// radix select. Include from .cu files only.
//
// Order: items i < n carry a 32-bit key (order_key(float): larger key = larger value) and are ranked
// by key descending, then index ascending ("ties go to the lower index", as the CPU twins' stable
// sorts do). block_select_cutoff finds the shortest prefix of that order whose measure reaches a
// target: measure 1 per item selects the top k (page selection, top-k), measure = probability in
// fixed point selects the top-p nucleus. How it works: four 8-bit radix passes over the keys, each
// building a 256-bin histogram of measure (shared-memory atomics on integers, so the result is
// deterministic) restricted to the key prefix chosen so far, find the cutoff key T; then, if T is
// tied, one pass in index order (block scan) finds the last tied index to take.
#pragma once

#include <cstdint>

namespace sparseserve::kernels::cuda {

// Float → uint32 with the same order (-inf < … < +inf); -0 and +0 map to one key (they compare equal).
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f + 0.0f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// A prefix of the order: item (key, i) is inside iff key > this.key or (key == this.key and i ≤ index).
struct Cutoff {
  uint32_t key;
  int32_t index;
  __device__ bool inside(uint32_t k, int32_t i) const { return k > key || (k == key && i <= index); }
};
__device__ constexpr Cutoff cutoff_all() { return {0u, INT32_MAX}; }
__device__ constexpr Cutoff cutoff_none() { return {0xffffffffu, -1}; }

struct SelectItem {
  uint32_t key;
  uint64_t measure;  // 0: not a member
};

struct SelectScratch {
  unsigned long long hist[256];
  unsigned count[256];
  unsigned long long warp_totals[32];
  unsigned long long above;  // measure of members ranked before the current key prefix
  unsigned long long tie_measure;
  uint32_t prefix;
  unsigned tie_count;
  int32_t cut_index;
  int all;
};

// Inclusive prefix sum over the block in thread order (blockDim.x a multiple of 32); total gets the
// block's sum. warp_totals: ≥ 32 entries of shared memory. Call from all threads.
template <class T>
__device__ __forceinline__ T block_inclusive_scan(T v, T* warp_totals, T& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  __syncthreads();  // warp_totals may still be read by a previous call
  if (lane == 31) warp_totals[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T t = lane < n_warps ? warp_totals[lane] : T{0};
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const T u = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) t += u;
    }
    if (lane < n_warps) warp_totals[lane] = t;
  }
  __syncthreads();
  total = warp_totals[n_warps - 1];
  return v + (warp > 0 ? warp_totals[warp - 1] : T{0});
}

// Shortest prefix of the order over the members (measure ≠ 0) of items 0..n-1 whose summed measure
// is ≥ target (target ≥ 1); cutoff_all() when all members together stay below target. item(i) returns
// SelectItem for i < n and must be a pure function (it is evaluated up to six times per item). Call
// from all threads of the block with the same arguments; s in shared memory.
template <class ItemFn>
__device__ __forceinline__ Cutoff block_select_cutoff(int32_t n, uint64_t target, const ItemFn& item,
                                                      SelectScratch& s) {
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x) {
      s.hist[d] = 0;
      s.count[d] = 0;
    }
    __syncthreads();
    for (int32_t i = threadIdx.x; i < n; i += blockDim.x) {
      const SelectItem it = item(i);
      if (it.measure != 0 && (it.key & mask) == prefix) {
        const uint32_t d = (it.key >> shift) & 255u;
        atomicAdd(&s.hist[d], static_cast<unsigned long long>(it.measure));
        atomicAdd(&s.count[d], 1u);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      if (shift == 24) {
        unsigned long long total = 0;
        for (int d = 0; d < 256; ++d) total += s.hist[d];
        s.all = total < target;
        s.above = 0;
      }
      if (!s.all) {
        unsigned long long acc = s.above;
        int d = 255;
        for (; d > 0; --d) {
          if (acc + s.hist[d] >= target) break;
          acc += s.hist[d];
        }
        s.above = acc;
        s.prefix = prefix | (static_cast<uint32_t>(d) << shift);
        s.tie_count = s.count[d];
        s.tie_measure = s.hist[d];
      }
    }
    __syncthreads();
    if (s.all) return cutoff_all();
    prefix = s.prefix;
    mask |= 255u << shift;
  }
  // prefix is the cutoff key T; members ranked before T hold s.above < target.
  const unsigned long long need = target - s.above;
  if (s.tie_count == 1 || s.tie_measure == need) return {prefix, INT32_MAX};  // uniform: shared values
  __syncthreads();  // every thread has read s.all / s.above / s.tie_* (wide loads may cover cut_index)
  if (threadIdx.x == 0) s.cut_index = INT32_MAX;
  unsigned long long run = 0;
  for (int32_t base = 0; base < n; base += blockDim.x) {
    const int32_t i = base + static_cast<int32_t>(threadIdx.x);
    unsigned long long m = 0;
    if (i < n) {
      const SelectItem it = item(i);
      if (it.key == prefix) m = it.measure;
    }
    unsigned long long chunk = 0;
    const unsigned long long incl = block_inclusive_scan(m, s.warp_totals, chunk);
    if (m != 0 && run + incl >= need && run + incl - m < need) s.cut_index = i;
    __syncthreads();
    if (s.cut_index != INT32_MAX) break;
    run += chunk;
  }
  return {prefix, s.cut_index};
}

}  // namespace sparseserve::kernels::cuda
