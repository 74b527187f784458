// The Llama-family forward pass of engine/cpu_forward.h on the GPU, with the attention of
// engine/paged_kv.h (DESIGN.md §5) per (layer, KV head) role of each sequence's sparsity profile:
// weights bf16 on the device, activations bf16 with fp32 accumulation, GEMMs through cuBLASLt (Q|K|V
// and gate|up fused), RMSNorm fused with the residual add, RoPE, SiLU-and-multiply, logits of the
// rows that need them copied back as fp32. K/V live in one device page pool ([num_pages][P][D] bf16 K
// and V, and K's min/max per logical sub-page for page selection: kv_append.h), one page = P tokens
// of one (layer, KV head) lane, as the KvCacheManager hands them out. Per layer:
//   1. retrieval lanes append the step's K/V (and fold them into the min/max bounds), streaming lanes
//      the K/V of one-token rows;
//   2. decode page selection (page_select.h) for the retrieval rows whose selection is due;
//   3. the attention of every (sequence, KV head) row: chunks of more than one token in one paged
//      prefill launch (retrieval chunks under dynamic prefill sparsity over the block masks that
//      XAttentionSelect estimates just before, kernels/cuda/block_sparse.h), one-token rows (decode
//      steps) in one split-KV decode launch. Retrieval rows are causal over their blocks (a decode row with selection over the selected blocks: the fresh
//      selection, or the previous one plus every block since); streaming rows take the Λ band over
//      sink and ring pages, plus the chunk's own K/V for a longer chunk;
//   4. streaming lanes write a longer chunk into sink and ring after the attention that read the
//      ring (a one-token row writes its key before, step 1: the slot it takes is outside the window).
// A step is planned on the host (engine/cuda/step_tables.h: every table in one upload, the attention
// plans), then run: decode steps from CUDA graphs (engine/cuda/step_graphs.h), other steps kernel by
// kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/cuda/step_graphs.h"
#include "engine/kv_backend.h"
#include "engine/model.h"
#include "engine/step_runner.h"
#include "kvcache/kv_cache_manager.h"
#include "kvcache/sparsity_profile.h"

namespace sparseserve {

class CudaForward {
 public:
  // Uploads the weights (dequantized to bf16) and allocates the page pool for manager.num_pages()
  // pages (K, V and the sub-page bounds), zeroed. The model and the manager must outlive this.
  // InternalError when the device lacks the memory or the shapes are outside the kernels' (head_dim
  // 64 or 128).
  // stream: where every step runs (and is synchronised); nullptr: a stream of this object's own
  // (the legacy default stream cannot be captured into the decode steps' CUDA graphs).
  CudaForward(const Model& model, const kvcache::KvCacheManager& manager, cudaStream_t stream = nullptr);
  ~CudaForward();
  CudaForward(const CudaForward&) = delete;
  CudaForward& operator=(const CudaForward&) = delete;

  // Binds a sequence the manager holds with profile's layout (PagedKvBackend::add_sequence: `stored`
  // tokens held already); the profile must outlive it. InternalError for an unknown or bound id, or
  // roles of another shape.
  void add_sequence(uint64_t id, const kvcache::SparsityProfile& profile, int64_t stored = 0);
  void release(uint64_t id);  // forgets the sequence here (the caller releases its pages)
  // K and V of pages' token ranges on the step's stream, in one launch (kernels/cuda/page_copy.h);
  // src < 0 zero-fills
  // (KvCacheManager::take_copies: destinations distinct, no source a destination).
  void copy_pages(std::span<const kvcache::PageCopy> copies);

  // As CpuForward::forward with PagedKvBackend's attention: stores each sequence's chunk K/V
  // (positions start .. start + n − 1) in its pages and fills logits [rows needing them][vocab] in
  // batch order. InvalidArgument for a token outside the vocabulary or a context over max_context;
  // InternalError for an unbound sequence, a start other than its stored length, a sequence twice,
  // or pages not allocated for the step; nothing is written then. Synchronises the stream (the
  // logits are on the host when it returns).
  void forward(std::span<const ForwardSeq> batch, std::vector<float>& logits) {
    std::vector<int32_t> none;
    forward(batch, {}, logits, none);
  }
  // The same, drawing the tokens of the logits rows in `draws` (StepRunner's contract: ascending
  // rows; their logits rows are left unwritten, their tokens go to drawn[i]) on the device
  // (kernels/cuda/sampling.h sample_rows over the fp32 logits).
  void forward(std::span<const ForwardSeq> batch, std::span<const DeviceDraw> draws, std::vector<float>& logits,
               std::vector<int32_t>& drawn);

  const SelectionStats& selection_stats() const;
  // Decode steps (every row a one-token row) run from CUDA graphs (engine/cuda/step_graphs.h)
  // unless the environment holds SPARSESERVE_CUDA_GRAPHS=0 when this object is made; other steps
  // launch their kernels one by one.
  const StepGraphStats& graph_stats() const;

  // Allocates the device's copy of the block tables for n sequences bound at once (more still fit:
  // it grows, between steps). InvalidArgument when n sequences' tables at the model's max_context
  // would pass int32 offsets.
  void reserve_sequences(int64_t n);

  // Prepares for steps of up to max_rows tokens and max_logit_rows logits rows: sizes the step
  // buffers and runs each GEMM shape such steps use once (the GEMMs run on rows rounded up to a
  // bucket, gemm_rows, so the shapes are few), so that no step pays for a first cuBLASLt plan or
  // kernel load. Synchronises; logs what it did.
  void warm_up(int64_t max_rows, int64_t max_logit_rows);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparseserve
