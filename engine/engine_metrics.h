// Counters and histograms the engine records and the server renders as Prometheus text
// (prefix `sparseserve:`). Thread-safe: recorded by the engine loop, read by scrapes.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace sparseserve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);  // ascending; +Inf is implicit
  void observe(double v);
  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // per bound, then +Inf last
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (non-cumulative), +Inf last
  double sum_ = 0;
  uint64_t count_ = 0;
};

struct EngineMetrics {
  EngineMetrics();
  Histogram time_to_first_token_seconds;
  Histogram inter_token_latency_seconds;
  Histogram e2e_request_latency_seconds;
  std::atomic<int64_t> requests_running{0};
  std::atomic<int64_t> requests_waiting{0};
  std::atomic<int64_t> num_preemptions{0};
  std::atomic<int64_t> prompt_tokens{0};        // prompt tokens run, cached ones included (recomputation excluded)
  // Prefix caching (vLLM's counters): prompt tokens of requests that looked their prefix up, and of
  // those, the tokens found cached.
  std::atomic<int64_t> prefix_cache_queries{0};
  std::atomic<int64_t> prefix_cache_hits{0};
  // Likewise for requests coming back after a preemption: the tokens they held (prompt and answer so
  // far), and of those, the tokens found cached instead of computed again.
  std::atomic<int64_t> prefix_cache_preempted_queries{0};
  std::atomic<int64_t> prefix_cache_preempted_hits{0};
  std::atomic<int64_t> generation_tokens{0};
  std::atomic<int64_t> requests_finished[5] = {};  // by FinishReason
  std::atomic<int64_t> kv_pages_total{0};
  std::atomic<int64_t> kv_pages_used_retrieval{0};
  std::atomic<int64_t> kv_pages_used_streaming{0};
  std::atomic<int64_t> kv_bytes_per_page{0};
  // Bytes the running sequences would hold under the dense profile minus what they hold now.
  std::atomic<int64_t> kv_bytes_saved{0};
  // Decode page selection: tokens read by retrieval heads vs what dense decode would read.
  std::atomic<int64_t> selected_tokens{0};
  std::atomic<int64_t> selectable_tokens{0};
  std::atomic<int64_t> page_selections{0};  // selections computed (per retrieval layer and KV head)
  // Generated tokens the backend drew on the device (StepRunner::draws_on_device).
  std::atomic<int64_t> device_drawn_tokens{0};
  // Steps run from CUDA graphs (StepRunner::graph_stats): replayed as captured, captured and updated
  // in place, captured into a new graph.
  std::atomic<int64_t> graph_replays{0};
  std::atomic<int64_t> graph_updates{0};
  std::atomic<int64_t> graph_captures{0};
};

}  // namespace sparseserve
