// Passkey retrieval accuracy of sparsity profiles on the CPU engine, plus KV memory per profile.
//   passkey_bench --model M --model-config Y [--contexts 1024,2048,4096,8192] [--trials 20]
//                 [--random-seed 7] [--json out.json] [--profiles NAME,...]
// Per context and trial: one needle at depth (trial + 0.5) / trials in real prose; greedy decode of
// 8 tokens; a hit when the 5-digit key appears in the output. Each distinct prefill (dense, the
// YAML's 50% head split, a random 50% head split) runs once per trial; decode policies that share
// it (streaming-only, page selection at 512 / 1024) restart from the same cache (rewind).
// --profiles: dense and the named profiles of the YAML instead, each with its own prefill (for
// profiles whose prefill differs, such as dynamic prefill sparsity).
#include <CLI/CLI.hpp>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/logging.h"
#include "engine/cpu_forward.h"
#include "engine/model.h"
#include "engine/model_profiles.h"
#include "engine/paged_kv.h"
#include "engine/passkey.h"
#include "kvcache/capacity.h"
#include "kvcache/head_pattern.h"

using namespace sparseserve;

namespace {

struct Variant {
  std::string name;                        // row label
  const kvcache::SparsityProfile* profile;
};
struct Prefill {
  std::string name;
  std::vector<Variant> variants;  // first one's roles/window used for the prefill
};

bool contains_key(const Tokenizer& tok, const std::vector<int32_t>& gen, const std::string& key) {
  return tok.decode(gen, true).find(key) != std::string::npos;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"passkey_bench"};
  std::string model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string yaml = "configs/models/smollm2-135m-instruct.yaml";
  std::string contexts_csv = "1024,2048,4096,8192", json_out;
  int trials = 20, decode = 8;
  uint64_t random_seed = 7;
  app.add_option("--model", model_path)->capture_default_str();
  app.add_option("--model-config", yaml)->capture_default_str();
  app.add_option("--contexts", contexts_csv)->capture_default_str();
  app.add_option("--trials", trials)->capture_default_str();
  app.add_option("--decode", decode)->capture_default_str();
  app.add_option("--random-seed", random_seed)->capture_default_str();
  app.add_option("--json", json_out);
  std::string only_csv;
  app.add_option("--profiles", only_csv, "dense and these YAML profiles (comma-separated), each its own prefill");
  CLI11_PARSE(app, argc, argv);
  init_logging("warn");

  const auto model = load_model(model_path);
  const ModelConfig& c = model->config;
  const ModelProfiles profiles = ModelProfiles::load(yaml, static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads));
  const kvcache::SparsityProfile& dense = profiles.get("dense");
  const kvcache::SparsityProfile& s_only = profiles.get("streaming-only");
  // Random heads: same count and window as the calibrated split, gates drawn uniformly.
  std::mt19937_64 grng(random_seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  kvcache::HeadGates rnd{static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_kv_heads), {}};
  for (int64_t i = 0; i < c.n_layers * c.n_kv_heads; ++i) rnd.values.push_back(u(grng));
  const double ratio = static_cast<double>(s_only.roles.count(kvcache::HeadRole::kRetrieval)) / static_cast<double>(c.n_layers * c.n_kv_heads);
  kvcache::SparsityProfile random_only = s_only;
  random_only.name = "random-streaming-only";
  random_only.roles = kvcache::roles_by_global_ratio(rnd, ratio);

  std::vector<Prefill> prefills = {
      {"dense", {{"dense", &dense}}},
      {"calibrated 50%", {{"streaming-only (calibrated)", &s_only}, {"select-512", &profiles.get("select-512")},
                          {"select-1024", &profiles.get("select-1024")}}},
      {"random 50%", {{"streaming-only (random heads)", &random_only}}},
  };
  if (!only_csv.empty()) {
    prefills.resize(1);
    std::stringstream names(only_csv);
    for (std::string name; std::getline(names, name, ',');) {
      if (name != "dense") prefills.push_back({name, {{name, &profiles.get(name)}}});
    }
  }

  std::vector<int64_t> contexts;
  std::stringstream ss(contexts_csv);
  // Room for the decoded tokens inside the model's context; lengths on 16-token sub-page boundaries.
  for (std::string x; std::getline(ss, x, ',');) {
    contexts.push_back(std::min<int64_t>(std::stoll(x), c.max_context - decode) / 16 * 16);
  }

  CpuForward fwd(*model);
  const Haystack haystack = default_haystack();
  const std::string& hay = haystack.text;
  spdlog::info("haystack: {}, {} bytes", haystack.source, hay.size());
  std::map<std::string, std::map<int64_t, int>> hits;
  std::map<std::string, int64_t> pages_at_max;
  const auto t_start = std::chrono::steady_clock::now();
  for (const int64_t ctx : contexts) {
    for (int trial = 0; trial < trials; ++trial) {
      std::mt19937_64 rng(1000 * static_cast<uint64_t>(ctx) + static_cast<uint64_t>(trial));
      const double depth = (trial + 0.5) / trials;
      const PasskeyPrompt pk = make_passkey_prompt(model->tokenizer, hay, ctx, {depth}, rng);
      const auto n = static_cast<int64_t>(pk.prompt.size());
      for (const Prefill& pf : prefills) {
        const kvcache::SparsityProfile& first = *pf.variants[0].profile;
        const auto layout = kvcache::SequenceLayout::from_roles(first.roles, first.streaming);
        std::optional<kvcache::StreamingGeometry> geo;
        if (layout.streaming) geo.emplace(profiles.kv_cache.page_tokens, *layout.streaming);
        const int32_t pages = kvcache::SequenceKv(profiles.kv_cache.page_tokens, layout.retrieval_slots,
                                                  layout.streaming_slots, geo).pages_needed(n + decode);
        kvcache::KvCacheManager mgr(profiles.kv_cache, pages);
        mgr.add_sequence(1, layout);
        PagedKvBackend be(c, mgr);
        be.add_sequence(1, first);
        std::vector<float> logits;
        for (int64_t off = 0; off < n; off += 512) {
          const int64_t cnt = std::min<int64_t>(512, n - off);
          mgr.allocate(1, off + cnt);
          const ForwardSeq s{1, off, std::span(pk.prompt).subspan(static_cast<size_t>(off), static_cast<size_t>(cnt)), false, n};
          fwd.forward(std::span(&s, 1), be, logits);
        }
        const std::vector<float> prompt_logits = logits;
        for (const Variant& v : pf.variants) {
          be.rewind(1, n, *v.profile);
          logits = prompt_logits;
          std::vector<int32_t> gen;
          for (int i = 0; i < decode; ++i) {
            gen.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
            if (i + 1 == decode) break;
            if (mgr.sequence(1).length() < n + i + 1) mgr.allocate(1, n + i + 1);  // kept across rewinds
            const ForwardSeq s{1, n + i, std::span(&gen.back(), 1), false, n};
            fwd.forward(std::span(&s, 1), be, logits);
          }
          hits[v.name][ctx] += contains_key(model->tokenizer, gen, pk.key) ? 1 : 0;
          {  // pages held at the context (the last context's value is reported)
            pages_at_max[v.name] = mgr.used_pages(kvcache::HeadRole::kRetrieval) + mgr.used_pages(kvcache::HeadRole::kStreaming);
          }
        }
      }
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
      std::string tally;
      for (const Prefill& pf : prefills) {
        for (const Variant& v : pf.variants) tally += fmt::format(" {}={}", v.name, hits[v.name][ctx]);
      }
      std::cerr << fmt::format("[{:.0f} s] context {} trial {}/{} done; hits so far:{}\n", el, ctx, trial + 1, trials, tally);
    }
    // Partial results as each context completes (long runs may be cut short).
    for (const Prefill& pf : prefills) {
      for (const Variant& v : pf.variants) {
        std::cerr << fmt::format("RESULT context={} profile=\"{}\" hits={}/{} kv_pages={}\n", ctx, v.name, hits[v.name][ctx],
                                 trials, pages_at_max[v.name]);
      }
    }
  }

  // Report: accuracy per profile and context; KV bytes at the longest context (bf16 on GPU, fp32 on CPU).
  kvcache::PageShape gpu{static_cast<int32_t>(c.head_dim), profiles.kv_cache.page_tokens, profiles.kv_cache.logical_page_tokens, 2, true};
  kvcache::PageShape cpu = gpu;
  cpu.bytes_per_element = 4;
  std::cout << "| profile |";
  for (int64_t ctx : contexts) std::cout << " " << ctx << " |";
  std::cout << " KV MiB at " << contexts.back() << " (bf16) | vs dense |\n|---|";
  for (size_t i = 0; i < contexts.size(); ++i) std::cout << "---|";
  std::cout << "---|---|\n";
  nlohmann::json j;
  const double dense_pages = static_cast<double>(pages_at_max["dense"]);
  for (const Prefill& pf : prefills) {
    for (const Variant& v : pf.variants) {
      std::cout << "| " << v.name << " |";
      for (int64_t ctx : contexts) {
        std::cout << fmt::format(" {:.0f}% |", 100.0 * hits[v.name][ctx] / trials);
        j[v.name]["accuracy"][std::to_string(ctx)] = static_cast<double>(hits[v.name][ctx]) / trials;
      }
      const double mib = static_cast<double>(pages_at_max[v.name]) * static_cast<double>(gpu.page_bytes()) / (1 << 20);
      std::cout << fmt::format(" {:.1f} | {:.2f}x less |\n", mib, dense_pages / static_cast<double>(pages_at_max[v.name]));
      j[v.name]["kv_pages"] = pages_at_max[v.name];
      j[v.name]["kv_bytes_bf16"] = pages_at_max[v.name] * static_cast<int64_t>(gpu.page_bytes());
      j[v.name]["kv_bytes_fp32_cpu"] = pages_at_max[v.name] * static_cast<int64_t>(cpu.page_bytes());
    }
  }
  if (!json_out.empty()) std::ofstream(json_out) << j.dump(2) << "\n";
  return 0;
}
