// Whole-engine throughput: B concurrent greedy requests of P prompt tokens and G generated tokens each
// through the serving engine (scheduler, forward pass, sampling, detokenizing), on the CPU or GPU
// backend. Phases, as bench/engine_bench.py times the peer (HF transformers generate):
//   prefill: from submitting all B requests until every one has its first token: B·P / that time;
//   decode:  the tokens all B requests received while every one of them was decoding (from the last
//            first token until the first request finished) / that time. When the prompts fit in one
//            step this is B·(G − 1) over the decode phase; when their prefill takes many steps (long
//            prompts), requests that started decoding early are not counted while others still
//            prefill, so the figure stays that of B sequences decoding together. The window must
//            hold decode steps: raise --decode-tokens when it is reported empty.
//   engine_bench --model M [--load-format dummy] [--backend cuda] [--batch 1,16] [--prompt-tokens 512] [--decode-tokens 128]
//                [--model-config YAML --profile NAME] [--kv-cache-bytes 8GiB] [--repeats 3]
//                [--shared-prefix N] [--prefix-caching on|off]
// Prompts are random token ids (fixed seed); with --shared-prefix, every prompt of every round begins
// with the same N of them (the warm-up round leaves them in the prefix cache, when it is on). Prints
// one JSON line per batch size (medians over the repeats, after one warm-up round).
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include "common/logging.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_profiles.h"
#include "kvcache/capacity.h"
#ifdef SPARSESERVE_BENCH_CUDA
#include "engine/cuda/cuda_step_runner.h"
#endif

using namespace sparseserve;
using clock_type = std::chrono::steady_clock;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Round {
  double prefill_s = 0;
  double decode_tok_s = 0;  // 0: no step had every request decoding
};

// One round: B requests at once; the time until all have a first token, then until all are done.
Round run_round(Engine& engine, int64_t batch, int64_t prompt_tokens, int64_t decode_tokens, const std::string& profile,
                const std::vector<int32_t>& shared, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> tok(100, static_cast<int32_t>(engine.model().config.vocab_size - 1));
  std::vector<std::shared_ptr<RequestStream>> streams;
  const auto t0 = clock_type::now();
  static int64_t serial = 0;
  for (int64_t b = 0; b < batch; ++b) {
    Request r;
    r.id = fmt::format("bench-{}", serial++);
    r.prompt.resize(static_cast<size_t>(prompt_tokens));
    for (int32_t& t : r.prompt) t = tok(rng);
    std::copy_n(shared.begin(), std::min(shared.size(), r.prompt.size()), r.prompt.begin());
    r.max_tokens = decode_tokens;
    r.sampling.temperature = 0.0f;
    r.ignore_eos = true;
    r.sparsity = profile;
    streams.push_back(engine.submit(std::move(r)));
  }
  std::vector<clock_type::time_point> first(streams.size()), last(streams.size());
  std::vector<int64_t> got(streams.size(), 0);
  std::vector<std::pair<clock_type::time_point, int64_t>> arrivals;  // (when, tokens) of every delivery
  size_t done = 0;
  std::vector<bool> finished(streams.size(), false);
  while (done < streams.size()) {
    for (size_t i = 0; i < streams.size(); ++i) {
      if (finished[i]) continue;
      while (auto out = streams[i]->next(std::chrono::milliseconds(0))) {
        const auto now = clock_type::now();
        if (got[i] == 0 && !out->token_ids.empty()) first[i] = now;
        got[i] += static_cast<int64_t>(out->token_ids.size());
        arrivals.emplace_back(now, static_cast<int64_t>(out->token_ids.size()));
        if (out->finished) {
          if (!out->error.empty()) throw std::runtime_error("request failed: " + out->error);
          last[i] = now;
          finished[i] = true;
          ++done;
          break;
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  const auto all_first = *std::max_element(first.begin(), first.end());
  const auto first_done = *std::min_element(last.begin(), last.end());
  Round r;
  r.prefill_s = std::chrono::duration<double>(all_first - t0).count();
  int64_t tokens = 0;
  for (const auto& [when, n] : arrivals) tokens += when > all_first && when <= first_done ? n : 0;
  const double window = std::chrono::duration<double>(first_done - all_first).count();
  if (window > 0 && tokens > 0) r.decode_tok_s = static_cast<double>(tokens) / window;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"engine_bench"};
  std::string model_path, load_format = "auto", model_config, profile, backend = "cpu", kv_bytes = "4GiB",
      batches = "1,16";
  int64_t prompt_tokens = 512, decode_tokens = 128, repeats = 3, shared_prefix = 0;
  std::string prefix_caching = "on";
  app.add_option("--model", model_path)->required();
  app.add_option("--load-format", load_format, "auto | dummy (made-up weights of the model's shapes)")
      ->check(CLI::IsMember({"auto", "dummy"}))
      ->capture_default_str();
  app.add_option("--backend", backend, "cpu | cuda")->capture_default_str();
  app.add_option("--model-config", model_config, "model YAML (profiles); default: dense only");
  app.add_option("--profile", profile, "sparsity profile of the requests; default: the YAML's default");
  app.add_option("--kv-cache-bytes", kv_bytes)->capture_default_str();
  app.add_option("--batch", batches, "comma-separated batch sizes")->capture_default_str();
  app.add_option("--prompt-tokens", prompt_tokens)->capture_default_str();
  app.add_option("--decode-tokens", decode_tokens)->capture_default_str();
  app.add_option("--shared-prefix", shared_prefix, "leading prompt tokens every request shares")->capture_default_str();
  app.add_option("--prefix-caching", prefix_caching, "on | off")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  std::string log_level = "warn";
  app.add_option("--repeats", repeats)->capture_default_str();
  app.add_option("--log-level", log_level, "info shows the GPU's step times with SPARSESERVE_STEP_TIMES=1")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  init_logging(log_level);
  try {
    const auto model = load_model(model_path, "auto", parse_load_format(load_format));
    const auto& mc = model->config;
    ModelProfiles profiles =
        model_config.empty()
            ? ModelProfiles::defaults_for(static_cast<int32_t>(mc.n_layers), static_cast<int32_t>(mc.n_kv_heads))
            : ModelProfiles::load(model_config, static_cast<int32_t>(mc.n_layers), static_cast<int32_t>(mc.n_kv_heads));
    std::vector<int64_t> sizes;
    std::stringstream ss(batches);
    for (std::string item; std::getline(ss, item, ',');) sizes.push_back(std::stoll(item));
    const int64_t most = *std::max_element(sizes.begin(), sizes.end());
    EngineConfig config;
    config.kv_cache_bytes = kvcache::parse_bytes(kv_bytes.c_str());
    config.max_num_seqs = static_cast<int32_t>(std::max<int64_t>(most, 1));
    config.max_num_batched_tokens = 8192;
    config.enable_prefix_caching = prefix_caching == "on";
    StepBackend step = cpu_step_backend();
    if (backend == "cuda") {
#ifdef SPARSESERVE_BENCH_CUDA
      step = cuda_step_backend(0);
#else
      throw std::runtime_error("this build has no CUDA backend");
#endif
    } else if (backend != "cpu") {
      throw std::runtime_error("--backend: cpu or cuda");
    }
    Engine engine(*model, std::move(profiles), config, std::move(step));
    const std::string used = profile.empty() ? engine.profiles().default_profile : profile;
    std::mt19937_64 rng(1234);
    std::vector<int32_t> shared(static_cast<size_t>(std::max<int64_t>(0, shared_prefix)));
    for (int32_t& t : shared) t = std::uniform_int_distribution<int32_t>(100, static_cast<int32_t>(mc.vocab_size - 1))(rng);
    for (int64_t batch : sizes) {
      std::vector<double> prefill, decode;  // decode: rounds with an all-decoding window
      for (int64_t r = 0; r <= repeats; ++r) {
        const Round round = run_round(engine, batch, prompt_tokens, decode_tokens, profile, shared, rng);
        if (r == 0) continue;  // warm-up
        prefill.push_back(static_cast<double>(batch * prompt_tokens) / round.prefill_s);
        if (round.decode_tok_s > 0) decode.push_back(round.decode_tok_s);
      }
      if (decode.empty()) {
        spdlog::warn("batch {}: no step had all {} requests decoding (their prefill outlasted the first one's "
                     "{} tokens): raise --decode-tokens; decode_tok_s is 0",
                     batch, batch, decode_tokens);
      }
      std::cout << fmt::format(
                       "{{\"engine\": \"sparseserve\", \"backend\": \"{}\", \"profile\": \"{}\", \"batch\": {}, "
                       "\"prompt_tokens\": {}, \"decode_tokens\": {}, \"shared_prefix\": {}, \"prefix_caching\": "
                       "\"{}\", \"prefill_tok_s\": {:.1f}, \"prefill_s\": {:.4f}, \"decode_tok_s\": {:.1f}, "
                       "\"prefix_cache_hits\": {}}}",
                       backend, used, batch, prompt_tokens, decode_tokens, shared_prefix, prefix_caching,
                       median(prefill), static_cast<double>(batch * prompt_tokens) / median(prefill),
                       decode.empty() ? 0.0 : median(decode), engine.metrics().prefix_cache_hits.load())
                << std::endl;
    }
    engine.shutdown(std::chrono::milliseconds(0));
  } catch (const std::exception& ex) {
    std::cerr << "engine_bench: " << ex.what() << "\n";
    return 1;
  }
  return 0;
}
