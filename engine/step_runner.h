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
#include <vector>

#include "engine/kv_backend.h"
#include "engine/model.h"
#include "kvcache/capacity.h"
#include "kvcache/kv_cache_manager.h"
#include "kvcache/sparsity_profile.h"

namespace sparseserve {

class StepRunner {
 public:
  virtual ~StepRunner() = default;
  // Binds a sequence the manager already holds with profile's layout; the profile outlives it.
  // InternalError for an unknown or already bound id, or a profile the runner does not run.
  virtual void add_sequence(uint64_t id, const kvcache::SparsityProfile& profile) = 0;
  // Forgets the sequence (the caller releases its pages).
  virtual void release(uint64_t id) = 0;
  // Runs the batch (CpuForward::forward's contract): stores each chunk's K/V and fills logits
  // [rows needing them][vocab] in batch order. InvalidArgument for a bad token or context; the
  // cache is unchanged then.
  virtual void forward(std::span<const ForwardSeq> batch, std::vector<float>& logits) = 0;
  // Totals since construction (zero where the runner does not select pages).
  virtual SelectionStats selection_stats() const = 0;
};

// A backend as the engine builds it: how its pages are sized and how its runner is made.
struct StepBackend {
  std::string name;  // "cpu" | "cuda": logs and metrics
  // The page of one lane in this backend's memory (head_dim and page sizes are filled in by the
  // engine): sizes the cache from kv_cache_bytes.
  int32_t bytes_per_element = 4;
  bool with_metadata = true;
  // Empty when the backend runs `profile`, else why not (requests naming it are refused with this).
  std::function<std::string(const kvcache::SparsityProfile&)> unsupported;
  // Throws InvalidArgument when a KV cache budget of `bytes` (kv_cache_bytes: the pages it buys,
  // metadata included, take at most that) cannot be allocated in this backend's memory next to the
  // model. Called before anything is allocated.
  std::function<void(const Model&, size_t bytes)> check_kv_bytes;
  // Device backends: the KV cache budget `utilization` ∈ (0, 1] of the device memory free after the
  // model's weights and the steps' headroom gives (vLLM's gpu_memory_utilization). InvalidArgument
  // when nothing is left. Empty on the CPU (its budget is kv_cache_bytes).
  std::function<size_t(const Model&, double utilization)> device_kv_bytes;
  // Builds the runner over the engine's manager (both outlive it).
  std::function<std::unique_ptr<StepRunner>(const Model&, kvcache::KvCacheManager&)> make;
};

// The CPU backend: PagedKvBackend's fp32 pages and CpuForward, both batch-invariant, every profile.
StepBackend cpu_step_backend();

}  // namespace sparseserve
