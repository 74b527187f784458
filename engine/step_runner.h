// The engine's seam to a backend: what runs a step's forward pass and owns the K/V behind it. The
// engine's KvCacheManager keeps the page bookkeeping (the scheduler allocates each step's pages
// before forward()); a runner stores K/V in those pages and computes attention as DESIGN.md §5
// says for each sequence's sparsity profile. CPU: engine/cpu_step_runner.cc; GPU:
// engine/cuda/cuda_step_runner.h (built only with CUDA).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "engine/kv_backend.h"
#include "engine/model.h"
#include "kvcache/capacity.h"
#include "kvcache/kv_cache_manager.h"
#include "kvcache/sparsity_profile.h"

namespace sparseserve {

// A logits row whose token the runner draws on the device (StepRunner::draws_on_device): its request
// changes nothing of the row on the host (no logits processor, penalty or bias). The draw follows
// kernels/cuda/sampling.h: greedy at temperature 0, else temperature → min-p → top-k → top-p with
// Philox noise keyed by (seed, step), so a seeded request repeats on this backend, whether or not it
// also asks for logprobs (keep_row).
struct DeviceDraw {
  int64_t row = 0;  // the logits row (forward's layout)
  bool keep_row = false;  // the host reads the row too (logprobs): forward() fills it as well
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;
  uint64_t step = 0;  // the request's draw number (tokens generated so far)
};

// How a runner's steps ran from CUDA graphs (engine/cuda/step_graphs.h), totals since construction.
struct StepGraphStats {
  int64_t replays = 0;         // steps launched from an unchanged graph
  int64_t updates = 0;         // steps captured and updated into an existing graph
  int64_t instantiations = 0;  // steps captured into a new graph
};

class StepRunner {
 public:
  virtual ~StepRunner() = default;
  // Binds a sequence the manager already holds with profile's layout; the profile outlives it.
  // `stored`: the tokens its pages hold already (the prefix the prefix cache found, whole pages; its
  // first step starts there). InternalError for an unknown or already bound id, a profile the runner
  // does not run, or a `stored` beyond the sequence's pages or inside a page.
  virtual void add_sequence(uint64_t id, const kvcache::SparsityProfile& profile, int64_t stored = 0) = 0;
  // Forgets the sequence (the caller releases its pages).
  virtual void release(uint64_t id) = 0;
  // Runs the manager's page copies (KvCacheManager::take_copies: K and V of a page's token range;
  // src < 0 zero-fills), ordered after every step run so far and before the next.
  virtual void copy_pages(std::span<const kvcache::PageCopy> copies) = 0;
  // Runs the batch (CpuForward::forward's contract): stores each chunk's K/V and sizes logits to
  // [rows needing them][vocab] in batch order, filling every row but those in `draws` (ascending
  // rows; only where draws_on_device()) without keep_row; a draw's token goes to drawn[i]. InvalidArgument for a bad
  // token or context; the cache is unchanged then.
  virtual void forward(std::span<const ForwardSeq> batch, std::span<const DeviceDraw> draws, std::vector<float>& logits,
                       std::vector<int32_t>& drawn) = 0;
  // Whether forward() draws tokens on the device (else `draws` must be empty).
  virtual bool draws_on_device() const { return false; }
  // Totals since construction (zero where the runner does not select pages).
  virtual SelectionStats selection_stats() const = 0;
  // Totals since construction (zero where the runner runs no CUDA graphs).
  virtual StepGraphStats graph_stats() const { return {}; }
};

// The most a step holds (EngineConfig's limits): runners may prepare for it (the GPU's warms its
// GEMM shapes up to it at start).
struct StepLimits {
  int64_t max_tokens = 0;     // rows of a step (max_num_batched_tokens)
  int64_t max_sequences = 0;  // sequences of a step (max_num_seqs)
  // {block_tokens, stride} of each profile with dynamic prefill sparsity (the GPU sizes the estimate's
  // workspace for them).
  std::vector<std::pair<int32_t, int32_t>> dynamic_prefill;
};

// A backend as the engine builds it: how its pages are sized and how its runner is made.
struct StepBackend {
  std::string name;  // "cpu" | "cuda": logs and metrics
  // The page of one lane in this backend's memory (head_dim and page sizes are filled in by the
  // engine): sizes the cache from kv_cache_bytes.
  int32_t bytes_per_element = 4;
  bool with_metadata = true;
  // Empty when the backend runs the model with these page sizes, else why not (the engine refuses
  // to start; the server's backend auto falls back to the CPU). Null: every model.
  std::function<std::string(const Model&, const kvcache::KvCacheConfig&)> unsupported_model;
  // Empty when the backend runs `profile` for the model, else why not (requests naming it are
  // refused with this).
  std::function<std::string(const Model&, const kvcache::SparsityProfile&)> unsupported;
  // Throws InvalidArgument when a KV cache budget of `bytes` (kv_cache_bytes: the pages it buys,
  // metadata included, take at most that) cannot be allocated in this backend's memory next to the
  // model and the buffers of steps up to `limits`. Called before anything is allocated.
  std::function<void(const Model&, size_t bytes, const StepLimits& limits)> check_kv_bytes;
  // Device backends: the KV cache budget `utilization` ∈ (0, 1] of the device memory free after the
  // model's weights and the buffers of steps up to `limits` (as vLLM's gpu_memory_utilization, but
  // a share of what is left, not of the whole device). InvalidArgument when nothing is left. Empty
  // on the CPU (its budget is kv_cache_bytes).
  std::function<size_t(const Model&, double utilization, const StepLimits& limits)> device_kv_bytes;
  // Builds the runner over the engine's manager (both outlive it).
  std::function<std::unique_ptr<StepRunner>(const Model&, kvcache::KvCacheManager&, const StepLimits&)> make;
};

// The CPU backend: PagedKvBackend's fp32 pages and CpuForward, both batch-invariant, every profile.
StepBackend cpu_step_backend();

}  // namespace sparseserve
