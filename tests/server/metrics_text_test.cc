// server/metrics_text: Prometheus text of EngineMetrics — every series prefixed and labelled,
// histograms cumulative with +Inf equal to the count, counters by finish reason.
#include "server/metrics_text.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <regex>
#include <sstream>

#include "engine/request.h"

namespace sparseserve {
namespace {

using ::testing::HasSubstr;

TEST(MetricsText, RendersEverySeries) {
  EngineMetrics m;
  m.time_to_first_token_seconds.observe(0.003);
  m.time_to_first_token_seconds.observe(0.3);
  m.time_to_first_token_seconds.observe(1000);
  m.requests_running = 2;
  m.requests_waiting = 5;
  m.kv_pages_total = 100;
  m.kv_pages_used_retrieval = 20;
  m.kv_pages_used_streaming = 5;
  m.requests_finished[static_cast<int>(FinishReason::kStop)] = 7;
  m.requests_finished[static_cast<int>(FinishReason::kAbort)] = 1;
  m.selected_tokens = 30;
  m.selectable_tokens = 120;
  m.graph_replays = 40;
  m.graph_captures = 2;
  const std::string text = render_metrics(m, {"my \"model\"", 25});

  const std::string l = "{model_name=\"my \\\"model\\\"\"";
  EXPECT_THAT(text, HasSubstr("sparseserve:time_to_first_token_seconds_bucket" + l + ",le=\"0.005\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:time_to_first_token_seconds_bucket" + l + ",le=\"0.5\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:time_to_first_token_seconds_bucket" + l + ",le=\"+Inf\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:time_to_first_token_seconds_count" + l + "} 3\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE sparseserve:time_to_first_token_seconds histogram\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:num_requests_running" + l + "} 2\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:num_requests_waiting" + l + "} 5\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:kv_cache_usage_perc" + l + "} 0.25\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:kv_pages_used" + l + ",role=\"streaming\"} 5\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:kv_pages_in_use" + l + "} 25\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:request_success_total" + l + ",finished_reason=\"stop\"} 7\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:request_success_total" + l + ",finished_reason=\"abort\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:decode_selected_ratio" + l + "} 0.25\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:cuda_graph_steps_total" + l + ",mode=\"replay\"} 40\n"));
  EXPECT_THAT(text, HasSubstr("sparseserve:cuda_graph_steps_total" + l + ",mode=\"capture\"} 2\n"));
  for (const char* name : {"inter_token_latency_seconds_sum", "e2e_request_latency_seconds_count",
                           "num_preemptions_total", "prompt_tokens_total", "generation_tokens_total", "kv_bytes_saved",
                           "kv_pages_total", "decode_selected_tokens_total", "decode_page_selections_total",
                           "device_drawn_tokens_total", "prefix_cache_preempted_queries_total",
                           "prefix_cache_preempted_hits_total"}) {
    EXPECT_THAT(text, HasSubstr(std::string("sparseserve:") + name + "{")) << name;
  }

  // Every line is a comment or `name{labels} value`.
  const std::regex sample(R"(^sparseserve:[a-z0-9_]+\{model_name="(\\.|[^"\\])*"(,[a-z_]+="[^"]*")*\} [-+0-9.eInfNa]+$)");
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
  }
}

}  // namespace
}  // namespace sparseserve
