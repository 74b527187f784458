// Page range copies. How this works: one CTA per copy (a grid-stride loop over the list past 65535),
// its threads stepping over the range's 16-byte units of K, then of V; a zero fill stores zeros.
#include "kernels/cuda/page_copy.h"

#include <algorithm>

#include "kernels/cuda/cuda_check.h"

namespace sparseserve::kernels::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    copy_page_ranges_kernel(uint4* __restrict__ k, uint4* __restrict__ v, int64_t page_units, int64_t row_units,
                            const cpu::PageRangeCopy* __restrict__ copies, int32_t n) {
  for (int32_t i = blockIdx.x; i < n; i += gridDim.x) {
    const cpu::PageRangeCopy c = copies[i];
    const int64_t units = int64_t{c.tokens} * row_units;
    const int64_t to = int64_t{c.dst} * page_units + int64_t{c.offset} * row_units;
    const int64_t from = int64_t{c.src} * page_units + int64_t{c.offset} * row_units;
    for (int64_t u = threadIdx.x; u < units; u += kThreads) {
      k[to + u] = c.src < 0 ? make_uint4(0, 0, 0, 0) : k[from + u];
      v[to + u] = c.src < 0 ? make_uint4(0, 0, 0, 0) : v[from + u];
    }
  }
}

}  // namespace

void copy_page_ranges(__nv_bfloat16* k, __nv_bfloat16* v, int64_t page_tokens, int64_t head_dim,
                      const cpu::PageRangeCopy* copies, int32_t n, cudaStream_t stream, std::source_location loc) {
  check(head_dim > 0 && head_dim % 8 == 0, "copy_page_ranges: head_dim must be a multiple of 8", loc);
  check(page_tokens > 0 && n >= 0, "copy_page_ranges: bad page_tokens or count", loc);
  if (n == 0) return;
  const int64_t row_units = head_dim / 8;
  const auto grid = static_cast<unsigned>(std::min<int32_t>(n, 65535));
  copy_page_ranges_kernel<<<grid, kThreads, 0, stream>>>(reinterpret_cast<uint4*>(k), reinterpret_cast<uint4*>(v),
                                                         page_tokens * row_units, row_units, copies, n);
  check_cuda(cudaGetLastError(), "copy_page_ranges_kernel", loc);
}

}  // namespace sparseserve::kernels::cuda
