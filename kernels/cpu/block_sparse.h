// Dynamic block sparsity for retrieval heads in prefill (XAttention-style), CPU twin
// (DESIGN.md §5.4): estimate each (query block, key block) share of the attention mass from strided
// antidiagonals, then keep per query block key block 0, the diagonal block and the highest-mass
// blocks until the kept share reaches `threshold`.
#pragma once

#include <cstdint>
#include <vector>

namespace sparseserve::kernels::cpu {

struct BlockMask {
  int64_t block_tokens = 0;
  int64_t first_qblock = 0;  // query block of row 0
  int64_t n_qblocks = 0;
  int64_t n_kblocks = 0;
  std::vector<uint8_t> allowed;  // [n_qblocks][n_kblocks], 1 = computed
  const uint8_t* row(int64_t qblock) const { return allowed.data() + (qblock - first_qblock) * n_kblocks; }
};

// The estimated attention mass of each (query block, key block) pair, the first half of
// xattention_block_mask; the same geometry as BlockMask.
struct BlockMass {
  int64_t block_tokens = 0;
  int64_t first_qblock = 0;  // query block of row 0
  int64_t n_qblocks = 0;
  int64_t n_kblocks = 0;
  std::vector<double> mass;  // [n_qblocks][n_kblocks]; key blocks past a row's query block hold 0
  const double* row(int64_t qblock) const { return mass.data() + (qblock - first_qblock) * n_kblocks; }
};

// Queries: T rows at positions q0 .. q0+T-1, `group` heads per row at q + t*q_row_stride + g*D.
// Keys: positions 0 .. q0+T-1 contiguous at keys + j*D. Blocks are aligned to absolute positions
// (block = pos / block_tokens). Row group a covers positions aS .. aS+S-1 (S = stride), key group c
// likewise; the estimate of (a, c) for head g averages q_{aS+S-1-r}·k_{cS+r} over the r whose row
// exists (q0 ≤ row < q0+T) and whose pair is causal (key ≤ row), scaled by 1/√D. Per row group and
// head a softmax over key groups 0..a; each key group's share goes to its key block (cS / B), summed
// over the group's heads and over the row groups of a query block (a row group counts for the block
// of its last existing row), row groups in order.
BlockMass xattention_block_mass(const float* q, int64_t q_row_stride, int32_t group, int64_t q0, int64_t T,
                                const float* keys, int64_t D, int32_t block_tokens, int32_t stride);

// Per query block qb: key block 0 and qb always, then the other blocks before qb in descending mass
// (ties: the lower block first) while the kept mass is below threshold · the row's total (blocks
// 0..qb); a row whose total is not positive keeps 0 and qb alone.
BlockMask select_blocks(const BlockMass& m, float threshold);

// select_blocks(xattention_block_mass(...), threshold).
BlockMask xattention_block_mask(const float* q, int64_t q_row_stride, int32_t group, int64_t q0, int64_t T,
                                const float* keys, int64_t D, int32_t block_tokens, int32_t stride, float threshold);

}  // namespace sparseserve::kernels::cpu
