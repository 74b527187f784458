#include "server/metrics_text.h"

#include <fmt/format.h>

#include <cmath>

#include "engine/request.h"

namespace sparseserve {

namespace {

std::string escape_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// Numbers as Prometheus reads them: integers without a fraction, +Inf spelled out.
std::string num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  return fmt::format("{}", v);
}

class Writer {
 public:
  explicit Writer(const std::string& model) : labels_("model_name=\"" + escape_label(model) + "\"") {}

  void header(const char* name, const char* type, const char* help) {
    out_ += fmt::format("# HELP sparseserve:{} {}\n# TYPE sparseserve:{} {}\n", name, help, name, type);
  }
  void sample(const std::string& name, double v, const std::string& extra = "") {
    out_ += fmt::format("sparseserve:{}{{{}{}}} {}\n", name, labels_, extra.empty() ? "" : "," + extra, num(v));
  }
  void gauge(const char* name, const char* help, double v) {
    header(name, "gauge", help);
    sample(name, v);
  }
  void counter(const char* name, const char* help, double v) {
    header(name, "counter", help);
    sample(name, v);
  }
  void histogram(const char* name, const char* help, const Histogram& h) {
    const Histogram::Snapshot s = h.snapshot();
    header(name, "histogram", help);
    const std::string base = name;
    for (size_t i = 0; i < s.bounds.size(); ++i) {
      sample(base + "_bucket", static_cast<double>(s.cumulative[i]), "le=\"" + num(s.bounds[i]) + "\"");
    }
    sample(base + "_bucket", static_cast<double>(s.count), "le=\"+Inf\"");
    sample(base + "_sum", s.sum);
    sample(base + "_count", static_cast<double>(s.count));
  }
  std::string take() { return std::move(out_); }

 private:
  std::string labels_;
  std::string out_;
};

}  // namespace

std::string render_metrics(const EngineMetrics& m, const MetricsContext& ctx) {
  Writer w(ctx.model_name);
  const auto get = [](const std::atomic<int64_t>& a) { return static_cast<double>(a.load(std::memory_order_relaxed)); };

  w.histogram("time_to_first_token_seconds", "Time from arrival to the first generated token, in seconds.",
              m.time_to_first_token_seconds);
  w.histogram("inter_token_latency_seconds", "Time between consecutive generated tokens, in seconds.",
              m.inter_token_latency_seconds);
  w.histogram("e2e_request_latency_seconds", "Time from arrival to the last token, in seconds.",
              m.e2e_request_latency_seconds);

  w.gauge("num_requests_running", "Requests in the running batch.", get(m.requests_running));
  w.gauge("num_requests_waiting", "Requests waiting to be scheduled.", get(m.requests_waiting));

  const double total = get(m.kv_pages_total);
  const double used_r = get(m.kv_pages_used_retrieval), used_s = get(m.kv_pages_used_streaming);
  w.gauge("kv_cache_usage_perc", "Fraction of KV cache pages in use (0 to 1).", total > 0 ? (used_r + used_s) / total : 0.0);
  w.gauge("kv_pages_total", "KV cache pages in the pools.", total);
  w.header("kv_pages_used", "gauge", "KV cache pages in use, by head role.");
  w.sample("kv_pages_used", used_r, "role=\"retrieval\"");
  w.sample("kv_pages_used", used_s, "role=\"streaming\"");
  w.gauge("kv_pages_in_use", "KV cache pages held by live requests (0 when idle).",
          static_cast<double>(ctx.kv_pages_in_use));
  w.gauge("kv_bytes_per_page", "Bytes of one KV page across all layers.", get(m.kv_bytes_per_page));
  w.gauge("kv_bytes_saved", "KV bytes the running sequences would hold under the dense profile minus what they hold.",
          get(m.kv_bytes_saved));

  w.counter("num_preemptions_total", "Preemptions (pages released, recomputed later).", get(m.num_preemptions));
  w.counter("prompt_tokens_total", "Prompt tokens run, cached ones included (recomputation excluded).",
            get(m.prompt_tokens));
  w.counter("prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", get(m.prefix_cache_queries));
  w.counter("prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", get(m.prefix_cache_hits));
  w.counter("prefix_cache_preempted_queries_total",
            "Tokens of preempted requests (prompt and answer so far) looked up in the prefix cache on resuming "
            "(profiles with page selection or dynamic prefill cache their prompts' blocks only).",
            get(m.prefix_cache_preempted_queries));
  w.counter("prefix_cache_preempted_hits_total", "Tokens of preempted requests found in the prefix cache on resuming.",
            get(m.prefix_cache_preempted_hits));
  w.counter("generation_tokens_total", "Generated tokens.", get(m.generation_tokens));
  w.header("request_success_total", "counter", "Finished requests, by finish reason.");
  for (const FinishReason r : {FinishReason::kStop, FinishReason::kLength, FinishReason::kAbort, FinishReason::kError}) {
    w.sample("request_success_total", get(m.requests_finished[static_cast<int>(r)]),
             fmt::format("finished_reason=\"{}\"", finish_reason_name(r)));
  }

  const double selected = get(m.selected_tokens), selectable = get(m.selectable_tokens);
  w.counter("decode_selected_tokens_total", "Tokens read by retrieval heads in decode under page selection.", selected);
  w.counter("decode_selectable_tokens_total", "Tokens dense decode would have read on the same heads.", selectable);
  w.gauge("decode_selected_ratio", "decode_selected_tokens_total / decode_selectable_tokens_total (1 when none).",
          selectable > 0 ? selected / selectable : 1.0);
  w.counter("decode_page_selections_total", "Page selections computed (one per retrieval layer and KV head).",
            get(m.page_selections));
  w.counter("device_drawn_tokens_total", "Generated tokens drawn on the GPU.", get(m.device_drawn_tokens));
  w.header("cuda_graph_steps_total", "counter",
           "Decode steps run from CUDA graphs: replayed as captured, updated in place, or captured anew.");
  w.sample("cuda_graph_steps_total", get(m.graph_replays), "mode=\"replay\"");
  w.sample("cuda_graph_steps_total", get(m.graph_updates), "mode=\"update\"");
  w.sample("cuda_graph_steps_total", get(m.graph_captures), "mode=\"capture\"");
  return w.take();
}

}  // namespace sparseserve
