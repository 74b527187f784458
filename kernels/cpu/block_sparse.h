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

// Queries: T rows at positions q0 .. q0+T-1, `group` heads per row at q + t*q_row_stride + g*D.
// Keys: positions 0 .. q0+T-1 contiguous at keys + j*D. Blocks are aligned to absolute positions
// (block = pos / block_tokens). The estimate for a query group of `stride` rows and a key group of
// `stride` keys averages q_{aS+S-1-r}·k_{cS+r} over r (causal pairs only), scaled by 1/√D;
// per row group and head a softmax over key groups, summed per block and over the group's heads.
BlockMask xattention_block_mask(const float* q, int64_t q_row_stride, int32_t group, int64_t q0, int64_t T,
                                const float* keys, int64_t D, int32_t block_tokens, int32_t stride, float threshold);

}  // namespace sparseserve::kernels::cpu
