// Page lists kept on the device: expand_key_runs (one warp a run, its entries in 32-wide strides:
// the store's pages and the three outputs are read and written coalesced) and scatter_pairs.
#include "kernels/cuda/page_lists.h"

#include "kernels/cuda/cuda_check.h"

namespace sparseserve::kernels::cuda {

namespace {

constexpr int kWarps = 8;  // runs per CTA

__global__ void __launch_bounds__(kWarps * 32) expand_key_runs_kernel(const KeyRun* runs, int32_t n_runs,
                                                                      const int32_t* store, const int32_t* staged,
                                                                      int32_t page_tokens, int32_t* out) {
  const int32_t i = static_cast<int32_t>(blockIdx.x) * kWarps + static_cast<int32_t>(threadIdx.x >> 5);
  if (i >= n_runs) return;
  const KeyRun r = runs[i];
  const bool positions = r.pos0_at >= 0;
  for (int32_t e = static_cast<int32_t>(threadIdx.x & 31); e < r.count; e += 32) {
    int32_t page, pos0 = 0, len = 0;
    if (r.src_step == 0) {
      const int32_t b = r.first + e;
      page = store[r.src + b];
      pos0 = b * page_tokens;
      len = min(page_tokens, r.end - pos0);
    } else {
      page = staged[r.src + e];
      if (positions) {
        pos0 = staged[r.src + r.src_step + e];
        len = staged[r.src + 2 * r.src_step + e];
      }
    }
    out[r.pages_at + e] = page;
    if (positions) {
      out[r.pos0_at + e] = pos0;
      out[r.len_at + e] = len;
    }
  }
}

__global__ void __launch_bounds__(256) scatter_pairs_kernel(const int32_t* pairs, int32_t n_pairs, int32_t* dst) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i < n_pairs) {
    const int2 p = reinterpret_cast<const int2*>(pairs)[i];
    dst[p.x] = p.y;
  }
}

}  // namespace

void expand_key_runs(const KeyRun* runs, int32_t n_runs, const int32_t* store, const int32_t* staged,
                     int32_t page_tokens, int32_t* out, cudaStream_t stream, std::source_location loc) {
  check(n_runs >= 0 && page_tokens > 0, "expand_key_runs: bad run count or page_tokens", loc);
  if (n_runs == 0) return;
  check(runs != nullptr && out != nullptr, "expand_key_runs: null runs or output", loc);
  check((reinterpret_cast<uintptr_t>(runs) & 3) == 0, "expand_key_runs: runs not 4-byte aligned", loc);
  const unsigned grid = static_cast<unsigned>((n_runs + kWarps - 1) / kWarps);
  expand_key_runs_kernel<<<grid, kWarps * 32, 0, stream>>>(runs, n_runs, store, staged, page_tokens, out);
  CUDA_CHECK_LAUNCH();
}

void scatter_pairs(const int32_t* pairs, int32_t n_pairs, int32_t* dst, cudaStream_t stream, std::source_location loc) {
  check(n_pairs >= 0, "scatter_pairs: negative count", loc);
  if (n_pairs == 0) return;
  check(pairs != nullptr && dst != nullptr, "scatter_pairs: null array", loc);
  check((reinterpret_cast<uintptr_t>(pairs) & 7) == 0, "scatter_pairs: pairs not 8-byte aligned", loc);
  scatter_pairs_kernel<<<static_cast<unsigned>((n_pairs + 255) / 256), 256, 0, stream>>>(pairs, n_pairs, dst);
  CUDA_CHECK_LAUNCH();
}

}  // namespace sparseserve::kernels::cuda
