// Attention of one query position over keys given as spans of contiguous tokens, under a mask
// (DESIGN.md §5). Every CPU attention path (dense cache, paged retrieval pages, streaming sink +
// ring + chunk buffer, selected pages, block-sparse prefill) reduces to this one function, so all
// of them compute exactly the same arithmetic for the same keys.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sparseserve::kernels::cpu {

// Keys at positions pos0 .. pos0+n-1: key i at k + i*stride, value i at v + i*stride (floats).
struct KeySpan {
  const float* k;
  const float* v;
  int64_t pos0;
  int32_t n;
  int32_t stride;
};

// Which keys j ≤ t a query at position t may see.
struct AttentionMask {
  enum class Kind { kCausal, kBand, kBlocks } kind = Kind::kCausal;
  // kBand (streaming heads): j < sink or t − j < local.
  int64_t sink = 0, local = 0;
  // kBlocks (dynamic prefill): key block j / block_tokens allowed when allowed[j / block_tokens]
  // (the row of the query's block; the diagonal block is causal inside).
  const uint8_t* allowed = nullptr;
  int64_t block_tokens = 0;

  static AttentionMask causal() { return {}; }
  static AttentionMask band(int64_t sink, int64_t local) { return {Kind::kBand, sink, local, nullptr, 0}; }
  static AttentionMask blocks(const uint8_t* allowed_row, int64_t block_tokens) {
    return {Kind::kBlocks, 0, 0, allowed_row, block_tokens};
  }
};

// out[0..D) = Σ_j softmax_j(q·k_j · scale) v_j over keys of `spans` allowed by `mask` for query
// position t, visited in span order (callers pass spans in ascending position order). Keys
// outside the mask are skipped whole ranges at a time. Writes zeros when no key is allowed.
// scratch is reused storage for the scores.
void attend_spans(const float* q, int64_t t, std::span<const KeySpan> spans, const AttentionMask& mask,
                  int64_t D, float scale, float* out, std::vector<float>& scratch);

}  // namespace sparseserve::kernels::cpu
