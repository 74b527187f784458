// Query-aware page selection for decode (Quest scores + top pages), CUDA; twin:
// kernels/cpu/page_select.h (quest_bound, page_score, select_pages); semantics: DESIGN.md §5.3.
//
// A batch row is one (sequence, KV head) lane of one layer. For row r:
//   - its query heads (bf16, after RoPE): head g < group at q + q_offset[r] + g * head_dim;
//   - its pages, CSR: page_indptr[r] .. page_indptr[r+1] lists the physical page of each logical block
//     b = 0 .. ceil(seq_lens[r] / P) - 1, in block order (exactly that many entries);
//   - the pool's sub-page bounds kmin/kmax: [num_pages][P / LP][head_dim] bf16, 16-byte aligned
//     (kv_append.h); block b holds min(P, seq_len - b·P) tokens, so its first ceil(tokens / LP)
//     sub-pages are valid.
// Outputs:
//   - scores[page_indptr[r] + b]: Quest score of block b = max over valid sub-pages and over the group's
//     query heads of Σ_d max(q_d·kmax_d, q_d·kmin_d) (fp32 accumulation in another order than the CPU:
//     exact whenever every partial sum is representable in fp32);
//   - the selection, CSR: selected_indptr (from plan_selected_indptr, uploaded) and, for
//     j < selected_indptr[r+1] - selected_indptr[r], in ascending block order: the blocks holding
//     positions < sink_tokens and the newest block, then the top-scoring other blocks (ties to the lower
//     block) while the selected tokens stay ≤ token_budget. Per selected entry e:
//       selected_pages[e]  physical page,
//       selected_blocks[e] block index b (optional),
//       selected_pos0[e]   b·P, selected_len[e] = min(P, seq_len - b·P) (optional, both or neither):
//     with selected_indptr and selected_pages these are decode_attention.h's KeyPageList, ready for the
//     decode kernel without a further launch.
// Plan, then run: the number of pages selected depends only on seq_len (every block but the newest
// is full), so the host sizes the CSR output before the launch and the run is CUDA graph safe.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <source_location>
#include <span>
#include <vector>

#include "kernels/cuda/page_select_plan.h"

namespace sparseserve::kernels::cuda {

// Rows one page_select call takes at most (the grid's y extent); callers split longer batches.
inline constexpr int32_t kPageSelectMaxRows = 65535;

struct PageSelectArgs {
  PageSelectConfig config;   // P / LP a power of two
  int32_t rows = 0;
  int32_t head_dim = 0;      // 64 or 128
  int32_t group = 1;         // query heads per KV head, 1 .. kPageSelectMaxGroup
  int32_t max_blocks = 0;    // ≥ ceil(seq_lens[r] / P) for every r (sizes the scoring grid; up to
                             // 8192 the selection stages the rows in shared memory, beyond it reads
                             // them from global memory)
  const __nv_bfloat16* q = nullptr;
  const int64_t* q_offset = nullptr;       // [rows]
  const __nv_bfloat16* kmin = nullptr;     // pool metadata
  const __nv_bfloat16* kmax = nullptr;
  const int32_t* page_indptr = nullptr;    // [rows + 1]
  const int32_t* page_indices = nullptr;   // [page_indptr[rows]]
  const int32_t* seq_lens = nullptr;       // [rows]
  float* scores = nullptr;                 // [page_indptr[rows]] (output)
  const int32_t* selected_indptr = nullptr;  // [rows + 1], plan_selected_indptr uploaded
  int32_t* selected_pages = nullptr;       // [selected_indptr[rows]] (output)
  int32_t* selected_blocks = nullptr;      // [selected_indptr[rows]] (output, optional)
  int32_t* selected_pos0 = nullptr;        // [selected_indptr[rows]] (output, optional, with selected_len)
  int32_t* selected_len = nullptr;         // [selected_indptr[rows]] (output, optional, with selected_pos0)
  // Workspace, [rows]: each row's count of scoring CTAs done, by which the selection learns that its
  // row's scores are written. All zero before the first call (a nonzero count would let the selection
  // read scores not yet written); every call leaves it all zero, a failed launch included. One call at
  // a time per workspace (calls on one stream, or ordered by events).
  uint32_t* row_ready = nullptr;
  // Programmatic dependent launch (sm_90): the scoring kernel may be scheduled while the stream's
  // previous kernel runs. q_offset, page_indptr, page_indices, seq_lens and selected_indptr are
  // plan-time inputs: uploaded by the host, written by no kernel (the kernels read them before
  // waiting for the previous one); q and the bounds may be the previous kernel's output. The
  // selecting kernel starts while the scoring runs and reads each row's scores once row_ready says
  // they are written.
  bool programmatic_launch = true;
};

inline constexpr int32_t kPageSelectMaxGroup = 16;

// Scores every listed page, then selects: two stream-ordered launches, no host sync. Checks the scalar
// arguments and pointers on the host (InternalError naming loc); the device arrays must follow the
// layout above.
void page_select(const PageSelectArgs& args, cudaStream_t stream,
                 std::source_location loc = std::source_location::current());

}  // namespace sparseserve::kernels::cuda
