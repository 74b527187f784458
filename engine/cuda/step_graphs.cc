#include "engine/cuda/step_graphs.h"

#include <algorithm>

#include "kernels/cuda/cuda_check.h"

namespace sparseserve {

using kernels::cuda::check_cuda;

namespace {

// Captures enqueue() on `stream` into a new graph. The capture is thread-local: other threads'
// CUDA calls (another engine, a test) are not disturbed. A throwing enqueue ends the capture first.
cudaGraph_t capture(cudaStream_t stream, const std::function<void()>& enqueue) {
  check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  try {
    enqueue();
  } catch (...) {
    cudaGraph_t broken = nullptr;
    cudaStreamEndCapture(stream, &broken);
    if (broken != nullptr) cudaGraphDestroy(broken);
    throw;
  }
  cudaGraph_t graph = nullptr;
  check_cuda(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  return graph;
}

struct GraphOwner {
  cudaGraph_t g;
  ~GraphOwner() { cudaGraphDestroy(g); }
};

}  // namespace

StepGraphs::~StepGraphs() { clear(); }

void StepGraphs::clear() {
  for (Entry& e : entries_) cudaGraphExecDestroy(e.exec);
  entries_.clear();
}

void StepGraphs::run(std::span<const int64_t> shape, std::span<const int64_t> key, cudaStream_t stream,
                     const std::function<void()>& enqueue) {
  auto it = std::find_if(entries_.begin(), entries_.end(),
                         [&](const Entry& e) { return std::ranges::equal(e.shape, shape); });
  if (it != entries_.end()) {
    entries_.splice(entries_.begin(), entries_, it);  // most recently used
    Entry& e = entries_.front();
    if (std::ranges::equal(e.key, key)) {
      ++stats_.replays;
      check_cuda(cudaGraphLaunch(e.exec, stream), "cudaGraphLaunch");
      return;
    }
    const GraphOwner graph{capture(stream, enqueue)};
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(e.exec, graph.g, &info) == cudaSuccess) {
      ++stats_.updates;
      e.key.assign(key.begin(), key.end());
      check_cuda(cudaGraphLaunch(e.exec, stream), "cudaGraphLaunch");
      return;
    }
    cudaGetLastError();  // the refused update is not an error of later calls
    cudaGraphExecDestroy(e.exec);
    entries_.pop_front();
    add(shape, key, graph.g, stream);
    return;
  }
  const GraphOwner graph{capture(stream, enqueue)};
  add(shape, key, graph.g, stream);
}

void StepGraphs::add(std::span<const int64_t> shape, std::span<const int64_t> key, cudaGraph_t graph,
                     cudaStream_t stream) {
  Entry e{{shape.begin(), shape.end()}, {key.begin(), key.end()}, nullptr};
  check_cuda(cudaGraphInstantiate(&e.exec, graph, 0), "cudaGraphInstantiate");
  ++stats_.instantiations;
  entries_.push_front(std::move(e));
  if (entries_.size() > capacity_) {
    cudaGraphExecDestroy(entries_.back().exec);
    entries_.pop_back();
  }
  check_cuda(cudaGraphLaunch(entries_.front().exec, stream), "cudaGraphLaunch");
}

}  // namespace sparseserve
