// Where a forward step's K/V go and how attention reads them. The forward pass computes Q/K/V and
// calls attend() once per layer; the backend owns the cache layout (dense contiguous, or paged
// with head roles, page selection and prefill sparsity).
#pragma once

#include <cstdint>
#include <span>

namespace sparseserve {

// One sequence's part of a step: tokens at positions start .. start+tokens.size()-1.
struct ForwardSeq {
  uint64_t id = 0;                   // the backend's sequence id
  int64_t start = 0;                 // tokens already in the cache (position of tokens[0])
  std::span<const int32_t> tokens;
  bool all_logits = false;           // logits for every token, else for the last one only
  int64_t prompt_len = 0;            // positions < prompt_len are prompt (prefill), the rest decode
  bool no_logits = false;            // no logits at all (a prefill chunk that samples nothing)
};

// Decode-time selection figures, summed over retrieval (layer, KV head) pairs and decode steps.
struct SelectionStats {
  int64_t selected_tokens = 0;  // tokens attended by retrieval heads in decode
  int64_t context_tokens = 0;   // tokens those heads would attend densely
  int64_t selections = 0;       // page selections computed (not reused)
};

class KvBackend {
 public:
  virtual ~KvBackend() = default;
  // Checks the batch against the cache before any layer runs (unknown id, start not equal to the
  // cached length, no room). Throws InvalidArgument or InternalError; nothing is changed then.
  virtual void begin_step(std::span<const ForwardSeq> batch) = 0;
  // qkv: [rows, qkv_stride] with Q | K | V (RoPE applied), rows in batch order. Stores the step's
  // K/V of `layer` and writes attention output [rows, n_heads * head_dim] to out.
  virtual void attend(int64_t layer, std::span<const ForwardSeq> batch, const float* qkv, int64_t qkv_stride,
                      float* out) = 0;
  // Called after the last layer: the step's tokens now count as cached.
  virtual void end_step(std::span<const ForwardSeq> batch) = 0;
};

}  // namespace sparseserve
