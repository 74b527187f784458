// Page selection kernels. How this works:
//   1. page_score_kernel: grid (pages / 4, rows); a block stages its row's group of query heads in
//      shared memory as fp32, then each warp scores one page at a time: lanes stride over head_dim,
//      reading each valid sub-page's kmin/kmax once for all query heads of the group (a register
//      accumulator per head), and warp sums give each head's bound.
//   2. page_select_kernel: one block per row; the always-kept blocks are known from seq_len, the other
//      blocks' cutoff comes from block_select_cutoff (top `take` in score-descending, block-ascending
//      order), and a block scan in block order writes the selected pages ascending.
#include "kernels/cuda/page_select.h"

#include <algorithm>

#include "kernels/cuda/block_select.cuh"
#include "kernels/cuda/cuda_check.h"

namespace sparseserve::kernels::cuda {

namespace {

constexpr int kScoreWarps = 4;
constexpr int kSelectThreads = 256;

__global__ void __launch_bounds__(kScoreWarps * 32) page_score_kernel(PageSelectArgs a) {
  extern __shared__ float qs[];  // [group][head_dim]
  const int r = blockIdx.y;
  const int D = a.head_dim, G = a.group;
  const __nv_bfloat16* q = a.q + a.q_offset[r];
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) qs[i] = __bfloat162float(q[i]);
  __syncthreads();

  const int32_t first = a.page_indptr[r];
  const int32_t n = a.page_indptr[r + 1] - first;
  const int64_t seq_len = a.seq_lens[r];
  const int P = a.config.page_tokens, LP = a.config.logical_page_tokens, SP = P / LP;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int32_t b = blockIdx.x * kScoreWarps + warp; b < n; b += gridDim.x * kScoreWarps) {
    const int64_t tokens = min(int64_t{P}, seq_len - int64_t{b} * P);
    const int valid = static_cast<int>((tokens + LP - 1) / LP);
    const int64_t page = a.page_indices[first + b];
    const float* mn = a.kmin + page * SP * D;
    const float* mx = a.kmax + page * SP * D;
    float best = -INFINITY;
    for (int s = 0; s < valid; ++s) {
      float acc[kPageSelectMaxGroup];
#pragma unroll
      for (int g = 0; g < kPageSelectMaxGroup; ++g) acc[g] = 0.0f;
      for (int d = lane; d < D; d += 32) {
        const float lo = mn[s * D + d], hi = mx[s * D + d];
#pragma unroll
        for (int g = 0; g < kPageSelectMaxGroup; ++g) {
          if (g < G) {
            const float qd = qs[g * D + d];
            acc[g] += fmaxf(qd * hi, qd * lo);
          }
        }
      }
#pragma unroll
      for (int g = 0; g < kPageSelectMaxGroup; ++g) {
        if (g < G) best = fmaxf(best, warp_sum(acc[g]));
      }
    }
    if (lane == 0) a.scores[first + b] = best;
  }
}

__global__ void __launch_bounds__(kSelectThreads) page_select_kernel(PageSelectArgs a) {
  __shared__ SelectScratch scratch;
  __shared__ unsigned scan_totals[32];
  const int r = blockIdx.x;
  const int32_t first = a.page_indptr[r];
  const int32_t n = a.page_indptr[r + 1] - first;
  const int64_t seq_len = a.seq_lens[r];
  const PageSelectConfig c = a.config;
  const auto sink_blocks =
      static_cast<int32_t>(min((c.sink_tokens + c.page_tokens - 1) / c.page_tokens, int64_t{n}));
  const int32_t kept = sink_blocks + (sink_blocks < n ? 1 : 0);
  const int32_t rest = sink_blocks < n ? n - 1 - sink_blocks : 0;
  const int32_t take = selected_page_count(seq_len, c) - kept;
  const int32_t out_first = a.selected_indptr[r];
  const int32_t capacity = a.selected_indptr[r + 1] - out_first;
  const float* sc = a.scores + first;

  // Candidates: the blocks that are neither sink blocks nor the newest one.
  const auto item = [=](int32_t i) {
    return SelectItem{order_key(sc[i]), i >= sink_blocks && i < n - 1 ? 1ull : 0ull};
  };
  const Cutoff cut = take <= 0      ? cutoff_none()
                     : take >= rest ? cutoff_all()
                                    : block_select_cutoff(n, static_cast<uint64_t>(take), item, scratch);

  unsigned written = 0;
  for (int32_t base = 0; base < n; base += blockDim.x) {
    const int32_t i = base + static_cast<int32_t>(threadIdx.x);
    bool keep = false;
    if (i < n) {
      keep = i < sink_blocks || i == n - 1 || cut.inside(order_key(sc[i]), i);
    }
    unsigned chunk = 0;
    const unsigned incl = block_inclusive_scan(keep ? 1u : 0u, scan_totals, chunk);
    if (keep) {
      const unsigned pos = written + incl - 1;
      if (pos < static_cast<unsigned>(capacity)) {  // capacity == selected_page_count by contract
        a.selected_pages[out_first + pos] = a.page_indices[first + i];
        if (a.selected_blocks != nullptr) a.selected_blocks[out_first + pos] = i;
      }
    }
    written += chunk;
  }
}

}  // namespace

std::vector<int32_t> plan_selected_indptr(std::span<const int32_t> seq_lens, const PageSelectConfig& config) {
  std::vector<int32_t> indptr(seq_lens.size() + 1, 0);
  for (size_t r = 0; r < seq_lens.size(); ++r) indptr[r + 1] = indptr[r] + selected_page_count(seq_lens[r], config);
  return indptr;
}

void page_select(const PageSelectArgs& a, cudaStream_t stream, std::source_location loc) {
  const PageSelectConfig c = a.config;
  check(c.page_tokens >= 1 && c.logical_page_tokens >= 1 && c.page_tokens % c.logical_page_tokens == 0,
        "page_select: logical_page_tokens must divide page_tokens", loc);
  check(c.sink_tokens >= 0 && c.token_budget >= 0, "page_select: sink_tokens and token_budget must be ≥ 0", loc);
  check(a.rows >= 0 && a.rows <= 65535, "page_select: rows must be in [0, 65535]", loc);
  check(a.head_dim >= 1 && a.head_dim <= 1024, "page_select: head_dim must be in [1, 1024]", loc);
  check(a.group >= 1 && a.group <= kPageSelectMaxGroup, "page_select: group must be in [1, 16]", loc);
  check(a.max_blocks >= 0, "page_select: max_blocks must be ≥ 0", loc);
  if (a.rows == 0) return;
  check(a.q != nullptr && a.q_offset != nullptr && a.kmin != nullptr && a.kmax != nullptr &&
            a.page_indptr != nullptr && a.page_indices != nullptr && a.seq_lens != nullptr && a.scores != nullptr &&
            a.selected_indptr != nullptr && a.selected_pages != nullptr,
        "page_select: null pointer", loc);
  const int32_t grid_x = std::clamp((a.max_blocks + kScoreWarps - 1) / kScoreWarps, 1, 1024);
  const size_t smem = static_cast<size_t>(a.group) * a.head_dim * sizeof(float);
  page_score_kernel<<<dim3(grid_x, a.rows), kScoreWarps * 32, smem, stream>>>(a);
  check_cuda(cudaGetLastError(), "page_score_kernel launch", loc);
  page_select_kernel<<<a.rows, kSelectThreads, 0, stream>>>(a);
  check_cuda(cudaGetLastError(), "page_select_kernel launch", loc);
}

}  // namespace sparseserve::kernels::cuda
