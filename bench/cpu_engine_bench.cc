// Prompt and decode throughput of the CPU engine on one sequence.
//   cpu_engine_bench --model M [--prompt-tokens 512] [--decode-tokens 128] [--repeats 3]
// Prompt: a real-text prompt (the license texts under /usr/share/common-licenses, else a built-in
// paragraph) cut to --prompt-tokens, prefilled in one forward call; decode: greedy tokens one at a
// time after it. Prints the median over repeats as a table row.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>

#include <fmt/format.h>

#include "common/logging.h"
#include "engine/cpu_forward.h"
#include "engine/dense_kv.h"
#include "engine/model.h"

using namespace sparseserve;
using clock_type = std::chrono::steady_clock;

static std::string corpus() {
  std::ifstream in("/usr/share/common-licenses/GPL-3");
  std::stringstream ss;
  if (in) ss << in.rdbuf();
  std::string s = ss.str();
  while (s.size() < 20000) s += "The quick brown fox jumps over the lazy dog while the committee reviews the annual report. ";
  return s;
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  CLI::App app{"cpu_engine_bench"};
  std::string model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  int64_t prompt_tokens = 512, decode_tokens = 128, repeats = 3;
  app.add_option("--model", model_path)->capture_default_str();
  app.add_option("--prompt-tokens", prompt_tokens)->capture_default_str();
  app.add_option("--decode-tokens", decode_tokens)->capture_default_str();
  app.add_option("--repeats", repeats)->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  init_logging("warn");
  const auto model = load_model(model_path);
  std::vector<int32_t> ids = model->tokenizer.encode(corpus(), false, false);
  if (static_cast<int64_t>(ids.size()) < prompt_tokens) {
    std::cerr << "corpus too short\n";
    return 1;
  }
  ids.resize(static_cast<size_t>(prompt_tokens));
  CpuForward fwd(*model);
  std::vector<double> prefill_tps, decode_tps;
  std::vector<float> logits;
  for (int64_t r = 0; r < repeats + 1; ++r) {  // first round warms up
    DenseKvBackend kv(model->config);
    kv.add_sequence(0);
    const auto t0 = clock_type::now();
    const ForwardSeq s{0, 0, ids, false, prompt_tokens};
    fwd.forward(std::span(&s, 1), kv, logits);
    const auto t1 = clock_type::now();
    for (int64_t i = 0; i < decode_tokens; ++i) {
      const auto tok = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      const ForwardSeq d{0, prompt_tokens + i, std::span(&tok, 1), false, prompt_tokens};
      fwd.forward(std::span(&d, 1), kv, logits);
    }
    const auto t2 = clock_type::now();
    if (r == 0) continue;
    prefill_tps.push_back(static_cast<double>(prompt_tokens) / std::chrono::duration<double>(t1 - t0).count());
    decode_tps.push_back(static_cast<double>(decode_tokens) / std::chrono::duration<double>(t2 - t1).count());
  }
  std::cout << fmt::format("| model | prompt tokens | prompt tok/s | decode tokens | decode tok/s |\n|---|---|---|---|---|\n")
            << fmt::format("| {} | {} | {:.0f} | {} | {:.1f} |\n", model->config.name, prompt_tokens,
                           median(prefill_tps), decode_tokens, median(decode_tps));
  return 0;
}
