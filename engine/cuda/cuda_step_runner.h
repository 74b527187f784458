// The GPU backend of the engine's step seam (engine/step_runner.h): CudaForward on one device, bf16
// pages with K's min/max per sub-page. It runs every profile of the models it takes.
#pragma once

#include <string>

#include "engine/step_runner.h"

namespace sparseserve {

// The backend on CUDA device `device`. Building the engine with it throws InvalidArgument when the
// device does not exist or its free memory cannot hold the weights, the KV cache and the step
// buffers.
StepBackend cuda_step_backend(int device = 0);

// Why the CUDA backend does not run the model with these page sizes (empty when it does): head_dim
// 64 or 128, pages of 16-128 tokens, GQA groups of 1-16 (the decode kernel's).
std::string cuda_unsupported_model(const ModelConfig& config, const kvcache::KvCacheConfig& kv);
// Why the CUDA backend does not run `profile` for the model (empty when it does): decode page
// selection needs groups of at most kPageSelectMaxGroup.
std::string cuda_unsupported_profile(const ModelConfig& config, const kvcache::SparsityProfile& profile);

// Device memory the buffers of steps up to `limits` may take besides weights and KV cache: the
// activations and the int32 tables of max_tokens rows, logits rows for each (prompt logprobs), max_sequences regions of
// the block store (the device's copy of their page tables), each layer's decode attention (its
// split rows' partials for max_sequences · n_kv_heads rows), the dynamic prefill sparsity estimate's
// workspace and masks for the profiles in limits.dynamic_prefill (shared by the layers: a chunk of T
// tokens at context L, stride S, block B takes about 4·(T/S)·heads·group·(L/B + 3·L/(128·S)) bytes),
// the prefill key split's partials (kernels/cuda/attention_plan.h prefill_split_workspace_bytes),
// cuBLASLt's workspace and the context's own allocations.
size_t cuda_step_bytes(const ModelConfig& config, const StepLimits& limits);

// Device memory the step's key lists and selection buffers may take with a KV cache of kv_bytes
// (engine/cuda/step_tables.h): a step lists each cached page in a few lists at most (its K/V
// entries of 3 int32 each, the selection's input and score, the staged sink and ring entries), each
// padded up to twice its length; bounded by 64 bytes per page at the smallest page (16 tokens of K
// and V, bf16): kv_bytes / head_dim at most.
size_t cuda_list_bytes(const ModelConfig& config, size_t kv_bytes);

// Device memory the model's weights take as CudaForward holds them (bf16, Q|K|V and gate|up fused).
size_t cuda_weight_bytes(const ModelConfig& config, bool tied_embeddings);

}  // namespace sparseserve
