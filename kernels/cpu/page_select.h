// Query-aware page selection (Quest with LServe's hierarchical paging), CPU twin (DESIGN.md §5.3).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sparseserve::kernels::cpu {

// Upper bound of q·k for any key k with kmin ≤ k ≤ kmax element-wise: Σ_d max(q_d·kmax_d, q_d·kmin_d).
float quest_bound(const float* q, const float* kmin, const float* kmax, int64_t D);

// Score of one physical page for one KV head: max over its first `valid_subpages` logical sub-pages
// (kmin/kmax: [subpages][D]) and over the `group` query heads (q + g * q_head_stride).
float page_score(const float* q, int64_t q_head_stride, int32_t group, const float* kmin, const float* kmax,
                 int32_t valid_subpages, int64_t D);

// Chooses the blocks (pages) a decode query reads: every block holding a position < sink_tokens and
// the newest block are always kept; the others are taken in descending score (ties: lower block)
// while the selected tokens stay ≤ token_budget. scores[b] for b < ceil(seq_len / page_tokens)
// (scores of always-kept blocks are ignored). Returns block indices in ascending order.
std::vector<int32_t> select_pages(std::span<const float> scores, int64_t seq_len, int32_t page_tokens,
                                  int64_t sink_tokens, int64_t token_budget);

}  // namespace sparseserve::kernels::cpu
