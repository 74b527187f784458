// fp32 forward pass of a Llama-family model on the CPU over a variable-length batch:
// embedding → per layer [RMSNorm → QKV (+bias) → RoPE → causal GQA attention → O → residual →
// RMSNorm → SwiGLU MLP → residual] → final RMSNorm → logits.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/kv_backend.h"
#include "engine/model.h"
#include "kernels/cpu/numerics.h"

namespace sparseserve {

class CpuForward {
 public:
  explicit CpuForward(const Model& model, kernels::cpu::Numerics numerics = kernels::cpu::Numerics::kFast);

  // Runs the batch; `kv` stores each chunk's K/V and computes attention.
  // logits: resized to rows × vocab, rows in batch order (all tokens or the last one per sequence).
  // Throws InvalidArgument for a token id outside the vocabulary or a context over max_context;
  // the cache is unchanged then.
  void forward(std::span<const ForwardSeq> batch, KvBackend& kv, std::vector<float>& logits);

  const Model& model() const { return model_; }

 private:
  const Model& model_;
  kernels::cpu::Numerics numerics_;
  std::vector<float> inv_freq_;
  // Scratch, reused across calls: [rows, width] row-major.
  std::vector<float> h_, xn_, qkv_, att_, proj_, gate_up_, act_, sel_;
  std::vector<int32_t> pos_;
};

}  // namespace sparseserve
