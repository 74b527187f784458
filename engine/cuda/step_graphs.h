// CUDA graphs for the engine's decode steps (DESIGN.md §8: a decode step of a small batch launches a
// few hundred short kernels and is bound by their launches, not by the GPU).
//
// The forward pass describes a step's device work by a key: every value its launches take (sizes,
// table offsets, buffer addresses, the attention objects used). Equal keys mean equal launches, and
// only the contents of device buffers (the step's tables, uploaded before) differ. StepGraphs keeps
// one instantiated graph per `shape` (the part of the key that fixes the graph's topology: row
// counts, which optional launches a layer makes):
//   - same shape, same key: the graph is launched again (no capture, no per-kernel launch);
//   - same shape, another key: the step is captured and the graph updated in place
//     (cudaGraphExecUpdate; instantiated anew when the update is refused);
//   - new shape: captured and instantiated; the least recently used of more than `capacity` shapes
//     is dropped.
// The caller keeps keys stable across steps (tables at offsets padded to capacities, buffers that
// only grow), so that most decode steps replay.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <list>
#include <span>
#include <vector>

#include "engine/step_runner.h"  // StepGraphStats

namespace sparseserve {

class StepGraphs {
 public:
  explicit StepGraphs(size_t capacity = 16) : capacity_(capacity) {}
  ~StepGraphs();
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  // Runs the step's device work on `stream`: from a graph, or by capturing `enqueue` (which must
  // only launch work on `stream`: kernels, cuBLASLt, device-to-device copies; no allocation, no
  // host synchronisation, no copy from pageable memory). InternalError (CUDA's) when capture,
  // instantiation or launch fails; the stream is out of capture mode then.
  void run(std::span<const int64_t> shape, std::span<const int64_t> key, cudaStream_t stream,
           const std::function<void()>& enqueue);

  // Drops every graph. For when an object whose device buffers graphs captured (an attention plan)
  // is replaced: a later one at the same address would otherwise match their keys.
  void clear();

  const StepGraphStats& stats() const { return stats_; }

 private:
  struct Entry {
    std::vector<int64_t> shape, key;
    cudaGraphExec_t exec = nullptr;
  };
  // Instantiates `graph` as the most recently used entry (dropping the oldest past capacity) and
  // launches it.
  void add(std::span<const int64_t> shape, std::span<const int64_t> key, cudaGraph_t graph, cudaStream_t stream);

  size_t capacity_;
  std::list<Entry> entries_;  // most recently used first
  StepGraphStats stats_;
};

}  // namespace sparseserve
