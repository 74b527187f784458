// The Llama-family forward pass of engine/cpu_forward.h on the GPU, for the dense profile (every KV
// head a retrieval head attending all j ≤ t): weights bf16 on the device, activations bf16 with fp32
// accumulation, GEMMs through cuBLASLt (Q|K|V and gate|up fused), RMSNorm fused with the residual
// add, RoPE, SiLU-and-multiply, K/V appended into one device page pool ([num_pages][P][D] bf16 K and
// V, the kvcache page model: one page = P tokens of one (layer, KV head) lane), attention by the
// paged prefill kernel for every sequence of the step (a decode token is a chunk of one), logits of
// the rows that need them copied back as fp32.
//
// The KvCacheManager owns the bookkeeping, as for the CPU engine: each sequence is registered with
// HeadRoles::all_retrieval's layout and has its pages allocated for the step before forward().
// Streaming heads, decode page selection and dynamic prefill are not run on this path yet.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/kv_backend.h"
#include "engine/model.h"
#include "kvcache/kv_cache_manager.h"

namespace sparseserve {

class CudaForward {
 public:
  // Uploads the weights (dequantized to bf16) and allocates the page pool for manager.num_pages()
  // pages of every (layer, KV head) lane, zeroed. The model and the manager must outlive this.
  // InternalError when the device lacks the memory or the shapes are outside the kernels' (head_dim
  // 64 or 128).
  CudaForward(const Model& model, const kvcache::KvCacheManager& manager, cudaStream_t stream = nullptr);
  ~CudaForward();
  CudaForward(const CudaForward&) = delete;
  CudaForward& operator=(const CudaForward&) = delete;

  // As CpuForward::forward with dense attention: stores each sequence's chunk K/V (positions start ..
  // start + n − 1) in its pages and fills logits [rows needing them][vocab] in batch order.
  // InvalidArgument for a token outside the vocabulary or a context over max_context; InternalError
  // for a sequence the manager does not hold pages for, or one whose layout is not all-retrieval.
  // Synchronises the stream (the logits are on the host when it returns).
  void forward(std::span<const ForwardSeq> batch, std::vector<float>& logits);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparseserve
