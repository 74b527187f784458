// KV append kernels. How this works: launch 1 resets (kmin = +inf, kmax = -inf) every sub-page whose
// first token is in the batch; launch 2 copies each row's K and V into its page slot (a thread per
// 16-byte unit, or per element when unaligned) and folds K into its sub-page's min/max with atomic
// float min/max. min/max are exact and order-independent, so the result equals the sequential CPU
// writes (see the contract in kv_append.h) and is deterministic.
#include "kernels/cuda/kv_append.h"

#include <algorithm>

#include "kernels/cuda/cuda_check.h"

namespace sparseserve::kernels::cuda {

namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t work_items) {
  return static_cast<unsigned>(std::clamp<int64_t>((work_items + kThreads - 1) / kThreads, 1, 1 << 16));
}

// Float min/max through integer atomics: non-negative floats order like their int bits, negative ones
// reversely to their unsigned bits. -0 is folded to +0 first (its int bits would order below every
// negative value). NaN keys are out of contract.
__device__ __forceinline__ void atomic_min_float(float* addr, float v) {
  v += 0.0f;  // -0 -> +0
  if (v >= 0.0f) {
    atomicMin(reinterpret_cast<int*>(addr), __float_as_int(v));
  } else {
    atomicMax(reinterpret_cast<unsigned*>(addr), __float_as_uint(v));
  }
}

__device__ __forceinline__ void atomic_max_float(float* addr, float v) {
  v += 0.0f;
  if (v >= 0.0f) {
    atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
  } else {
    atomicMin(reinterpret_cast<unsigned*>(addr), __float_as_uint(v));
  }
}

__device__ __forceinline__ bool row_in_range(const KvPoolView& pool, int32_t page, int32_t offset) {
  return page >= 0 && page < pool.num_pages && offset >= 0 && offset < pool.page_tokens;
}

__device__ __forceinline__ bool row_has_metadata(const KvPoolView& pool, const KvAppendRows& rows, int64_t n) {
  return pool.kmin != nullptr && (rows.with_metadata == nullptr || rows.with_metadata[n] != 0);
}

// Sub-page row `offset / LP` of `page` in kmin/kmax.
__device__ __forceinline__ int64_t meta_index(const KvPoolView& pool, int32_t page, int32_t offset) {
  const int32_t subpages = pool.page_tokens / pool.logical_page_tokens;
  return (int64_t{page} * subpages + offset / pool.logical_page_tokens) * pool.head_dim;
}

__global__ void __launch_bounds__(kThreads) kv_reset_subpages_kernel(KvPoolView pool, KvAppendRows rows) {
  const int64_t total = rows.rows * pool.head_dim;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t n = t / pool.head_dim, d = t % pool.head_dim;
    const int32_t page = rows.page_ids[n], offset = rows.offsets[n];
    if (!row_in_range(pool, page, offset) || offset % pool.logical_page_tokens != 0) continue;
    if (!row_has_metadata(pool, rows, n)) continue;
    const int64_t m = meta_index(pool, page, offset) + d;
    pool.kmin[m] = INFINITY;
    pool.kmax[m] = -INFINITY;
  }
}

__global__ void __launch_bounds__(kThreads) kv_append_kernel(KvPoolView pool, KvAppendRows rows, bool vec) {
  const int D = pool.head_dim;
  const int units = vec ? D / 8 : D;
  const int64_t total = rows.rows * units;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t n = t / units;
    const int j = static_cast<int>(t % units);
    const int32_t page = rows.page_ids[n], offset = rows.offsets[n];
    if (!row_in_range(pool, page, offset)) continue;
    const int64_t slot = (int64_t{page} * pool.page_tokens + offset) * D;
    const __nv_bfloat16* key = rows.k_new + n * rows.k_stride;
    const __nv_bfloat16* value = rows.v_new + n * rows.v_stride;
    const bool meta = row_has_metadata(pool, rows, n);
    const int64_t m = meta ? meta_index(pool, page, offset) : 0;
    if (vec) {
      const uint4 kraw = reinterpret_cast<const uint4*>(key)[j];
      reinterpret_cast<uint4*>(pool.k + slot)[j] = kraw;
      reinterpret_cast<uint4*>(pool.v + slot)[j] = reinterpret_cast<const uint4*>(value)[j];
      if (meta) {
        float f[8];
        bf16x8_to_float(kraw, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          atomic_min_float(pool.kmin + m + 8 * j + i, f[i]);
          atomic_max_float(pool.kmax + m + 8 * j + i, f[i]);
        }
      }
    } else {
      const __nv_bfloat16 kv = key[j];
      pool.k[slot + j] = kv;
      pool.v[slot + j] = value[j];
      if (meta) {
        atomic_min_float(pool.kmin + m + j, __bfloat162float(kv));
        atomic_max_float(pool.kmax + m + j, __bfloat162float(kv));
      }
    }
  }
}

}  // namespace

void kv_append(const KvPoolView& pool, const KvAppendRows& rows, cudaStream_t stream, std::source_location loc) {
  check(pool.num_pages >= 1 && pool.num_pages <= INT32_MAX && pool.page_tokens >= 1 && pool.head_dim >= 1,
        "kv_append: pool must have pages, page_tokens ≥ 1 and head_dim ≥ 1", loc);
  check(pool.logical_page_tokens >= 1 && pool.page_tokens % pool.logical_page_tokens == 0,
        "kv_append: logical_page_tokens must divide page_tokens", loc);
  check(pool.k != nullptr && pool.v != nullptr, "kv_append: null K or V pool", loc);
  check((pool.kmin == nullptr) == (pool.kmax == nullptr), "kv_append: kmin and kmax must both be set or both null",
        loc);
  check(rows.rows >= 0 && rows.k_stride >= pool.head_dim && rows.v_stride >= pool.head_dim,
        "kv_append: rows ≥ 0 and row strides ≥ head_dim", loc);
  if (rows.rows == 0) return;
  check(rows.k_new != nullptr && rows.v_new != nullptr && rows.page_ids != nullptr && rows.offsets != nullptr,
        "kv_append: null row pointer", loc);
  const int64_t D = pool.head_dim;
  const bool vec = D % 8 == 0 && rows.k_stride % 8 == 0 && rows.v_stride % 8 == 0 && is_aligned16(rows.k_new) &&
                   is_aligned16(rows.v_new) && is_aligned16(pool.k) && is_aligned16(pool.v);
  if (pool.kmin != nullptr) {
    kv_reset_subpages_kernel<<<grid_for(rows.rows * D), kThreads, 0, stream>>>(pool, rows);
    check_cuda(cudaGetLastError(), "kv_reset_subpages_kernel launch", loc);
  }
  kv_append_kernel<<<grid_for(rows.rows * (vec ? D / 8 : D)), kThreads, 0, stream>>>(pool, rows, vec);
  check_cuda(cudaGetLastError(), "kv_append_kernel launch", loc);
}

}  // namespace sparseserve::kernels::cuda
