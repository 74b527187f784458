// The host side of page selection's plan (page_select.h): the selection geometry, the number of pages
// a sequence keeps and the CSR offsets sized from it before the launch. Pure C++ (no CUDA header), so
// it builds and is tested everywhere, CI without nvcc included; the count is also device code under nvcc.
#pragma once

#include <cstdint>
#include <source_location>
#include <span>
#include <vector>

#if defined(__CUDACC__)
#define SPARSESERVE_HOST_DEVICE __host__ __device__
#else
#define SPARSESERVE_HOST_DEVICE
#endif

namespace sparseserve::kernels::cuda {

// Selection geometry shared by the host plan and the kernels.
struct PageSelectConfig {
  int32_t page_tokens = 0;          // P
  int32_t logical_page_tokens = 0;  // LP, divides P
  int64_t sink_tokens = 0;
  int64_t token_budget = 0;
};

// Blocks holding positions < sink_tokens in a sequence long enough: ceil(sink_tokens / P).
SPARSESERVE_HOST_DEVICE inline int64_t sink_block_count(const PageSelectConfig& c) {
  return (c.sink_tokens + c.page_tokens - 1) / c.page_tokens;
}

// Pages select_pages keeps for a sequence of seq_len tokens (the CPU twin's result size).
SPARSESERVE_HOST_DEVICE inline int32_t selected_page_count(int64_t seq_len, const PageSelectConfig& c) {
  const int64_t P = c.page_tokens;
  const int64_t n = (seq_len + P - 1) / P;
  if (n <= 0) return 0;
  const int64_t sink_blocks = sink_block_count(c) < n ? sink_block_count(c) : n;
  const bool newest_extra = sink_blocks < n;
  int64_t kept_tokens = sink_blocks * P < seq_len ? sink_blocks * P : seq_len;
  if (newest_extra) kept_tokens += seq_len - (n - 1) * P;
  const int64_t rest = newest_extra ? n - 1 - sink_blocks : 0;
  const int64_t room = c.token_budget - kept_tokens;
  const int64_t take = room > 0 ? (room / P < rest ? room / P : rest) : 0;
  return static_cast<int32_t>(sink_blocks + (newest_extra ? 1 : 0) + take);
}

// selected_indptr for rows with these sequence lengths: [rows + 1], starting at 0. Checks the config as
// page_select does, every length ≥ 0 and the total within int32 (InternalError naming loc).
std::vector<int32_t> plan_selected_indptr(std::span<const int32_t> seq_lens, const PageSelectConfig& config,
                                          std::source_location loc = std::source_location::current());

// Throws InternalError "<who>: ..." naming loc unless the geometry is one page_select accepts
// (LP divides P, P / LP a power of two, sink_tokens and token_budget ≥ 0).
void check_page_select_config(const PageSelectConfig& config, const char* who, const std::source_location& loc);

}  // namespace sparseserve::kernels::cuda
