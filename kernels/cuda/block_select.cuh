// Device helpers shared by page selection and sampling: block-wide scans and the "top of an order"
// radix select. Include from .cu files only.
//
// Order: items i < n carry a 32-bit key (order_key(float): larger key = larger value) and are ranked
// by key descending, then index ascending ("ties go to the lower index", as the CPU twins' stable
// sorts do). Two selects over that order, both radix selects with up to four 8-bit passes, each pass
// building a 256-bin histogram (shared-memory integer atomics, so results are deterministic) of the
// members whose key starts with the prefix chosen so far, then one warp picking the next digit with a
// suffix scan over the bins (warp_pick_digit):
//   - block_select_cutoff: shortest prefix of the order whose measure reaches a target: measure 1 per
//     item selects the top k, measure = probability in fixed point the top-p nucleus (sampling). A
//     tied cutoff key is resolved by one more pass in index order (block scan).
//   - block_topk_cutoff: the top k members, counts only (32-bit bins, one atomic per lane unless the
//     whole warp shares a digit, two histograms so a pass takes two barriers, digits counted from the
//     highest bit where the members differ, stops as soon as the boundary bin is taken whole, ranks a
//     boundary bin of ≤ 32 keys directly instead of two or more further passes); the tied cutoff
//     key is returned as a number of ties to take, which the caller's ordered compaction resolves
//     for free (page selection).
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

// One warp's digit pick over a 256-bin histogram (bins ranked from 255 down): the largest digit d with
// above + Σ_{d' ≥ d} hist[d'] ≥ target, or 0 when there is none. above': above + Σ_{d' > d} hist[d'];
// bin: hist[d]; total: Σ hist. Lane l scans bins 255 - 8l .. 248 - 8l, a warp scan joins the lanes.
// Call from all 32 lanes of one warp; every lane gets the result.
template <class T>
struct DigitPick {
  int digit;
  T above, bin, total;
};
template <class T>
__device__ __forceinline__ DigitPick<T> warp_pick_digit(const T* hist, T above, T target) {
  const int lane = threadIdx.x & 31;
  T c[8];
  T sum = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    c[e] = hist[255 - 8 * lane - e];
    sum += c[e];
  }
  T incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T u = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += u;
  }
  const unsigned hit = __ballot_sync(0xffffffffu, above + incl >= target);
  const int owner = hit != 0 ? __ffs(hit) - 1 : 31;
  T acc = above + incl - sum;
  int e = 0;
  T bin = c[0];
#pragma unroll
  for (int k = 0; k < 7; ++k) {
    if (e == k && acc + c[k] < target) {
      acc += c[k];
      e = k + 1;
      bin = c[k + 1];
    }
  }
  DigitPick<T> p;
  p.digit = 255 - 8 * owner - __shfl_sync(0xffffffffu, e, owner);
  p.above = __shfl_sync(0xffffffffu, acc, owner);
  p.bin = __shfl_sync(0xffffffffu, bin, owner);
  p.total = __shfl_sync(0xffffffffu, incl, 31);
  return p;
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
    if (threadIdx.x < 32) {
      const DigitPick<unsigned long long> p =
          warp_pick_digit<unsigned long long>(s.hist, shift == 24 ? 0ull : s.above, target);
      __syncwarp();  // every lane has read s.above
      if (threadIdx.x == 0) {
        if (shift == 24) s.all = p.total < target;
        if (!s.all) {
          s.above = p.above;
          s.prefix = prefix | (static_cast<uint32_t>(p.digit) << shift);
          s.tie_count = s.count[p.digit];
          s.tie_measure = p.bin;
        }
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

// ---- top k by count ----------------------------------------------------------------------------

// The top k of the order among the members: member i is inside iff its key > key, or key == this.key
// and fewer than `ties` members with this key come before it (index order).
struct TopkCut {
  uint32_t key;
  uint32_t ties;
};
__device__ constexpr TopkCut topk_all() { return {0u, 0xffffffffu}; }
__device__ constexpr TopkCut topk_none() { return {0xffffffffu, 0u}; }

struct TopkItem {
  uint32_t key;
  bool member;
};

// A boundary bin of at most this many members, with more than one pass left, is ranked directly.
inline constexpr unsigned kTopkRankKeys = 32;

struct TopkScratch {
  unsigned hist[2][256];  // the current pass's histogram and the next one's (zeroed meanwhile)
  int digit;
  unsigned above, bin, total;
  __align__(16) uint32_t rank_keys[kTopkRankKeys];  // the boundary bin's keys, in no order
  unsigned gathered;
  TopkCut ranked;
};

// Prepares s for block_topk_cutoff: call from all threads of the block, then pass a barrier before it.
__device__ __forceinline__ void topk_reset(TopkScratch& s) {
  for (int d = threadIdx.x; d < 256; d += blockDim.x) s.hist[0][d] = 0;
  if (threadIdx.x == 0) s.gathered = 0;
}

// block_topk_cutoff's last step: the `bin` members whose key matches prefix under mask (1 ≤ need ≤
// bin ≤ kTopkRankKeys) hold the cutoff; the need-th of them in the order is it. Thread t < bin ranks
// gathered key t: its order position is the keys above it plus the equal keys gathered before it
// (ties between equal keys are resolved by the caller in index order, so any order of equal keys
// gives the same cut). Exactly one thread holds position need - 1 and writes the cut.
template <class ItemFn>
__device__ __forceinline__ TopkCut topk_rank_bin(int32_t n, const ItemFn& item, TopkScratch& s, uint32_t prefix,
                                                 uint32_t mask, unsigned bin, unsigned need) {
  for (int32_t i = threadIdx.x; i < n; i += blockDim.x) {
    const TopkItem it = item(i);
    if (it.member && (it.key & mask) == prefix) s.rank_keys[atomicAdd(&s.gathered, 1u)] = it.key;
  }
  // The vector reads below cover keys past bin up to the next multiple of 4: initialised, not counted.
  if (threadIdx.x < (4 - bin % 4) % 4) s.rank_keys[bin + threadIdx.x] = 0;
  __syncthreads();
  if (threadIdx.x < bin) {
    const uint32_t mine = s.rank_keys[threadIdx.x];
    unsigned above = 0, before = 0;
    for (unsigned j = 0; j < bin; j += 4) {
      const uint4 k4 = *reinterpret_cast<const uint4*>(s.rank_keys + j);
      const uint32_t k[4] = {k4.x, k4.y, k4.z, k4.w};
#pragma unroll
      for (unsigned e = 0; e < 4; ++e) {
        const bool real = j + e < bin;
        above += real && k[e] > mine ? 1u : 0u;
        before += real && k[e] == mine && j + e < threadIdx.x ? 1u : 0u;
      }
    }
    if (above + before == need - 1) s.ranked = TopkCut{mine, need - above};
  }
  __syncthreads();
  return s.ranked;
}

// The top k members (measure 1 each) of items 0..n-1: topk_none() for k ≤ 0, topk_all() when there
// are ≤ k members. item(i) returns TopkItem for i < n and must be a pure function (evaluated up to
// four times per item; cheap when the keys are staged in shared memory). lo ≤ hi: bounds of the
// members' keys (0 and ~0 when unknown); the bits above the highest bit where they differ are shared
// by every member and get no pass, and the digits are counted from that bit down (bits top .. top - 7,
// then the next 8, the last digit narrower), so that the first pass spends all 8 bits where the
// members differ. When a pass leaves a boundary bin of ≤ kTopkRankKeys members and more than one
// pass to go, its keys are gathered and each ranked against the others by one thread (the bin's
// order position of every key: keys above it, equal keys gathered before it), which takes about one
// pass's time in place of the rest. Call from all threads of the block (blockDim.x a multiple of 32,
// ≥ kTopkRankKeys) with the same arguments; s in shared memory, prepared by topk_reset(s) behind a
// barrier (the caller's own, saving one here).
template <class ItemFn>
__device__ __forceinline__ TopkCut block_topk_cutoff(int32_t n, int32_t k, const ItemFn& item, TopkScratch& s,
                                                     uint32_t lo = 0, uint32_t hi = 0xffffffffu) {
  if (k <= 0) return topk_none();
  const unsigned target = static_cast<unsigned>(k);
  const unsigned lane = threadIdx.x & 31;
  const int top = lo == hi ? 0 : 31 - __clz(lo ^ hi);
  uint32_t mask = top == 31 ? 0u : ~((2u << top) - 1u);  // the known bits, above top
  uint32_t prefix = hi & mask;
  unsigned above = 0;  // members ranked before the current key prefix
  for (int high = top, pass = 0; high >= 0; high -= 8, ++pass) {  // this pass's digit: bits shift .. high
    const int shift = max(high - 7, 0);
    const uint32_t digit_mask = (2u << (high - shift)) - 1u;
    unsigned* hist = s.hist[pass & 1];
    // The next pass's histogram: its last reader (the pick two passes back) is behind a barrier.
    for (int d = threadIdx.x; d < 256; d += blockDim.x) s.hist[(pass + 1) & 1][d] = 0;
#pragma unroll 4
    for (int32_t base = 0; base < n; base += blockDim.x) {  // same trip count in every lane: redux
      const int32_t i = base + static_cast<int32_t>(threadIdx.x);
      unsigned digit = 256;  // not counted
      if (i < n) {
        const TopkItem it = item(i);
        if (it.member && (it.key & mask) == prefix) digit = (it.key >> shift) & digit_mask;
      }
      // One atomic per lane; a warp whose lanes all share one digit (ties, or a digit above the
      // members' differing bits) adds once, so that equal keys do not serialise on one bin.
      if (__reduce_min_sync(0xffffffffu, digit) == __reduce_max_sync(0xffffffffu, digit)) {
        if (lane == 0 && digit < 256) atomicAdd(&hist[digit], 32u);
      } else if (digit < 256) {
        atomicAdd(&hist[digit], 1u);
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      const DigitPick<unsigned> p = warp_pick_digit<unsigned>(hist, above, target);
      if (threadIdx.x == 0) {
        s.digit = p.digit;
        s.above = p.above;
        s.bin = p.bin;
        s.total = p.total;
      }
    }
    __syncthreads();
    const unsigned total = s.total, bin = s.bin;
    const uint32_t digit = static_cast<uint32_t>(s.digit);
    if (pass == 0 && total <= target) return topk_all();
    above = s.above;
    prefix |= digit << shift;
    mask |= digit_mask << shift;
    // The members with this prefix are all inside when the boundary bin is taken whole.
    if (above + bin == target) return prefix == 0 ? topk_all() : TopkCut{prefix - 1, 0u};
    if (shift > 8 && bin <= kTopkRankKeys) return topk_rank_bin(n, item, s, prefix, mask, bin, target - above);
  }
  return {prefix, target - above};
}

}  // namespace sparseserve::kernels::cuda
