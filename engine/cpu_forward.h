// fp32 forward pass of a Llama-family model on the CPU over a variable-length batch:
// embedding → per layer [RMSNorm → QKV (+bias) → RoPE → causal GQA attention → O → residual →
// RMSNorm → SwiGLU MLP → residual] → final RMSNorm → logits.
//
// Tools that rerun the tail of a step (calibrate's head ablation) observe the residual stream with a
// LayerTap and later resume the same step at a layer from what the tap saw (forward_from_layer):
// the layers before it are not run again, so the backend is asked for attention of the later
// layers only and needs no K/V of the earlier ones.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "engine/kv_backend.h"
#include "engine/model.h"
#include "kernels/cpu/numerics.h"

namespace sparseserve {

class CpuForward {
 public:
  // Observer of the residual stream of a step: called with the stream entering each layer l that
  // runs (before l's attention RMSNorm) and once with l = n_layers for the stream after the last
  // layer (before the final RMSNorm). residual: [rows, hidden] fp32, rows in batch order; valid
  // during the call only.
  using LayerTap = std::function<void(int64_t layer, std::span<const float> residual)>;

  explicit CpuForward(const Model& model, kernels::cpu::Numerics numerics = kernels::cpu::Numerics::kFast);

  // Runs the batch; `kv` stores each chunk's K/V and computes attention.
  // logits: resized to rows × vocab, rows in batch order (all tokens or the last one per sequence).
  // Throws InvalidArgument for a token id outside the vocabulary or a context over max_context;
  // the cache is unchanged then.
  void forward(std::span<const ForwardSeq> batch, KvBackend& kv, std::vector<float>& logits) {
    run(0, {}, batch, kv, logits, nullptr);
  }
  // The same, calling tap for every layer (and after the last).
  void forward(std::span<const ForwardSeq> batch, KvBackend& kv, std::vector<float>& logits, const LayerTap& tap) {
    run(0, {}, batch, kv, logits, &tap);
  }
  // Resumes a step at first_layer ∈ [0, n_layers]: `residual` is the stream entering that layer
  // ([rows, hidden], as a LayerTap saw it for the same batch); layers first_layer .. n_layers-1 and
  // the head run as in forward(), kv.attend is called for those layers only. With the same inputs
  // the logits equal forward()'s bit for bit. InvalidArgument for a layer out of range or a
  // residual of the wrong size, and as forward(). At layer 0 the residual is not read (the
  // embedding is recomputed).
  void forward_from_layer(int64_t first_layer, std::span<const float> residual, std::span<const ForwardSeq> batch,
                          KvBackend& kv, std::vector<float>& logits, const LayerTap& tap = {}) {
    run(first_layer, residual, batch, kv, logits, tap ? &tap : nullptr);
  }

  // Final RMSNorm + LM head of residual rows ([rows, hidden], the stream after the last layer) into
  // logits [rows, vocab]; forward()'s logits of those rows up to rounding (the LM head matmul's
  // blocking depends on the row count).
  void project_logits(std::span<const float> residual, std::vector<float>& logits);

  const Model& model() const { return model_; }

 private:
  void run(int64_t first_layer, std::span<const float> residual, std::span<const ForwardSeq> batch, KvBackend& kv,
           std::vector<float>& logits, const LayerTap* tap);
  // Final RMSNorm of x ([rows, hidden], in place) and LM head into logits [rows, vocab].
  void head(float* x, int64_t rows, float* logits);

  const Model& model_;
  kernels::cpu::Numerics numerics_;
  std::vector<float> inv_freq_;
  // Scratch, reused across calls: [rows, width] row-major.
  std::vector<float> h_, xn_, qkv_, att_, proj_, gate_up_, act_, sel_;
  std::vector<int32_t> pos_;
};

}  // namespace sparseserve
