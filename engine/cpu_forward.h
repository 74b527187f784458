// fp32 forward pass of a Llama-family model on the CPU over a variable-length batch:
// embedding → per layer [RMSNorm → QKV (+bias) → RoPE → causal GQA attention → O → residual →
// RMSNorm → SwiGLU MLP → residual] → final RMSNorm → logits.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/dense_kv.h"
#include "engine/model.h"

namespace sparseserve {

// One sequence's part of a step: tokens at positions kv->length() .. kv->length()+tokens.size()-1.
struct ForwardSeq {
  DenseKvCache* kv = nullptr;
  std::span<const int32_t> tokens;
  bool all_logits = false;  // logits for every token of the chunk, else for its last token only
};

class CpuForward {
 public:
  explicit CpuForward(const Model& model);

  // Runs the batch, appends each chunk's K/V to its cache and advances its length.
  // logits: resized to rows × vocab, rows in batch order (all tokens or the last one per sequence).
  // Throws InvalidArgument for a token id outside the vocabulary or a context over max_context.
  void forward(std::span<const ForwardSeq> batch, std::vector<float>& logits);

  const Model& model() const { return model_; }

 private:
  const Model& model_;
  std::vector<float> inv_freq_;
  // Scratch, reused across calls: [rows, width] row-major.
  std::vector<float> h_, xn_, qkv_, att_, proj_, gate_up_, act_, sel_;
  std::vector<int32_t> pos_;
};

}  // namespace sparseserve
