// KV append kernels. How this works: launch 1 resets (kmin = +inf, kmax = -inf) every sub-page whose
// first token is in the batch; launch 2 copies each row's K and V into its page slot (a thread per
// 16-byte unit, or per element when unaligned) and folds K into its sub-page's min/max with atomic
// bf16 min/max (one vector reduction per 16-byte unit, a 16-bit compare-and-swap loop per element on
// the unaligned path). min/max are exact and order-independent, and -0 is folded to +0 first, so the
// result equals the sequential CPU writes (see the contract in kv_append.h) and is deterministic.
#include "kernels/cuda/kv_append.h"

#include <algorithm>

#include "kernels/cuda/cuda_check.h"

namespace sparseserve::kernels::cuda {

namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t work_items) {
  return static_cast<unsigned>(std::clamp<int64_t>((work_items + kThreads - 1) / kThreads, 1, 1 << 16));
}

// 8 bf16 with -0 turned into +0 (a zero's sign would make min/max results depend on the order).
__device__ __forceinline__ uint4 fold_negative_zero(uint4 x) {
  const auto fold = [](uint32_t w) { return w & __vcmpne2(w & 0x7fff7fffu, 0u); };
  return make_uint4(fold(x.x), fold(x.y), fold(x.z), fold(x.w));
}

// Element-wise atomic min / max of 8 bf16 at a 16-byte aligned address (sm_90 vector reductions).
__device__ __forceinline__ void atomic_min_bf16x8(__nv_bfloat16* addr, uint4 v) {
  asm volatile("red.global.min.noftz.v4.bf16x2 [%0], {%1, %2, %3, %4};\n" ::"l"(addr), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w)
               : "memory");
}
__device__ __forceinline__ void atomic_max_bf16x8(__nv_bfloat16* addr, uint4 v) {
  asm volatile("red.global.max.noftz.v4.bf16x2 [%0], {%1, %2, %3, %4};\n" ::"l"(addr), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w)
               : "memory");
}

// One bf16 folded into *addr with min (kMax false) or max, by 16-bit compare-and-swap.
template <bool kMax>
__device__ __forceinline__ void atomic_fold_bf16(__nv_bfloat16* addr, __nv_bfloat16 v) {
  auto* word = reinterpret_cast<unsigned short*>(addr);
  const float x = __bfloat162float(v) + 0.0f;  // -0 -> +0
  const unsigned short bits = __bfloat16_as_ushort(__float2bfloat16(x));
  unsigned short old = *reinterpret_cast<volatile unsigned short*>(word);
  while (kMax ? x > __bfloat162float(__ushort_as_bfloat16(old)) : x < __bfloat162float(__ushort_as_bfloat16(old))) {
    const unsigned short seen = atomicCAS(word, old, bits);
    if (seen == old) break;
    old = seen;
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

// Both kernels run over (head, row) pairs i = h * rows + r: page_ids[i], offsets[r].
__global__ void __launch_bounds__(kThreads) kv_reset_subpages_kernel(KvPoolView pool, KvAppendRows rows) {
  const int64_t total = rows.rows * rows.heads * pool.head_dim;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = t / pool.head_dim, d = t % pool.head_dim, r = i % rows.rows;
    const int32_t page = rows.page_ids[i], offset = rows.offsets[r];
    if (!row_in_range(pool, page, offset) || offset % pool.logical_page_tokens != 0) continue;
    if (!row_has_metadata(pool, rows, r)) continue;
    const int64_t m = meta_index(pool, page, offset) + d;
    pool.kmin[m] = __ushort_as_bfloat16(0x7f80);  // +inf
    pool.kmax[m] = __ushort_as_bfloat16(0xff80);  // -inf
  }
}

__global__ void __launch_bounds__(kThreads) kv_append_kernel(KvPoolView pool, KvAppendRows rows, bool vec) {
  const int D = pool.head_dim;
  const int units = vec ? D / 8 : D;
  const int64_t total = rows.rows * rows.heads * units;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = t / units, h = i / rows.rows, r = i - h * rows.rows;
    const int j = static_cast<int>(t % units);
    const int32_t page = rows.page_ids[i], offset = rows.offsets[r];
    if (!row_in_range(pool, page, offset)) continue;
    const int64_t slot = (int64_t{page} * pool.page_tokens + offset) * D;
    const __nv_bfloat16* key = rows.k_new + r * rows.k_stride + h * D;
    const __nv_bfloat16* value = rows.v_new + r * rows.v_stride + h * D;
    const bool meta = row_has_metadata(pool, rows, r);
    const int64_t m = meta ? meta_index(pool, page, offset) : 0;
    if (vec) {
      const uint4 kraw = reinterpret_cast<const uint4*>(key)[j];
      reinterpret_cast<uint4*>(pool.k + slot)[j] = kraw;
      reinterpret_cast<uint4*>(pool.v + slot)[j] = reinterpret_cast<const uint4*>(value)[j];
      if (meta) {
        const uint4 folded = fold_negative_zero(kraw);
        atomic_min_bf16x8(pool.kmin + m + 8 * j, folded);
        atomic_max_bf16x8(pool.kmax + m + 8 * j, folded);
      }
    } else {
      const __nv_bfloat16 kv = key[j];
      pool.k[slot + j] = kv;
      pool.v[slot + j] = value[j];
      if (meta) {
        atomic_fold_bf16<false>(pool.kmin + m + j, kv);
        atomic_fold_bf16<true>(pool.kmax + m + j, kv);
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
  check(rows.rows >= 0 && rows.heads >= 1, "kv_append: rows ≥ 0 and heads ≥ 1", loc);
  const int64_t width = int64_t{rows.heads} * pool.head_dim;
  check(rows.k_stride >= width && rows.v_stride >= width, "kv_append: row strides ≥ heads × head_dim", loc);
  if (rows.rows == 0) return;
  check(rows.k_new != nullptr && rows.v_new != nullptr && rows.page_ids != nullptr && rows.offsets != nullptr,
        "kv_append: null row pointer", loc);
  const int64_t D = pool.head_dim;
  const bool vec = D % 8 == 0 && rows.k_stride % 8 == 0 && rows.v_stride % 8 == 0 && is_aligned16(rows.k_new) &&
                   is_aligned16(rows.v_new) && is_aligned16(pool.k) && is_aligned16(pool.v) &&
                   (pool.kmin == nullptr || (is_aligned16(pool.kmin) && is_aligned16(pool.kmax)));
  if (pool.kmin != nullptr) {
    kv_reset_subpages_kernel<<<grid_for(rows.rows * rows.heads * D), kThreads, 0, stream>>>(pool, rows);
    check_cuda(cudaGetLastError(), "kv_reset_subpages_kernel launch", loc);
  }
  kv_append_kernel<<<grid_for(rows.rows * rows.heads * (vec ? D / 8 : D)), kThreads, 0, stream>>>(pool, rows, vec);
  check_cuda(cudaGetLastError(), "kv_append_kernel launch", loc);
}

}  // namespace sparseserve::kernels::cuda
