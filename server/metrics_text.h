// Prometheus text exposition (format 0.0.4) of the engine's metrics for GET /metrics. Every series
// is named `sparseserve:<name>` and labelled model_name="<served name>", as vLLM labels its own.
#pragma once

#include <cstdint>
#include <string>

#include "engine/engine_metrics.h"

namespace sparseserve {

struct MetricsContext {
  std::string model_name;
  int64_t kv_pages_in_use = 0;  // Engine::kv_pages_in_use(): pages held by live requests
};

// Series: time_to_first_token_seconds, inter_token_latency_seconds, e2e_request_latency_seconds
// (histograms); num_requests_running, num_requests_waiting, kv_cache_usage_perc (0..1),
// kv_pages_total, kv_pages_used{role}, kv_pages_in_use, kv_bytes_per_page, kv_bytes_saved,
// decode_selected_ratio (gauges); num_preemptions_total, prompt_tokens_total,
// generation_tokens_total, request_success_total{finished_reason}, decode_selected_tokens_total,
// decode_selectable_tokens_total (counters).
std::string render_metrics(const EngineMetrics& metrics, const MetricsContext& ctx);

}  // namespace sparseserve
