#include "server/cli_info.h"

#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "engine/model.h"
#include "kvcache/capacity.h"

namespace sparseserve::cli {

void add_info_command(CLI::App& app, InfoArgs& args) {
  auto* cmd = app.add_subcommand("info", "Describe a model: architecture, shapes, types, memory");
  cmd->add_option("--model", args.model, "GGUF file or Hugging Face directory")->required();
  cmd->add_option("--load-format", args.load_format, "auto | dummy (made-up weights of the model's shapes)")
      ->check(CLI::IsMember({"auto", "dummy"}))
      ->capture_default_str();
  cmd->add_flag("--json", args.json, "Print JSON");
}

int run_info(const InfoArgs& args) {
  const auto m = load_model(args.model, "auto", parse_load_format(args.load_format));
  const ModelConfig& c = m->config;
  // KV bytes per token for dense fp32 (CPU) and bf16 (GPU) caches: K and V, every layer and KV head.
  const int64_t kv_elems_per_token = 2 * c.n_layers * c.n_kv_heads * c.head_dim;
  // What the serving engine (the CPU backend) holds for one dense full-context sequence: pages of
  // the default geometry (kvcache/geometry.h), fp32 K/V plus the sub-page min/max metadata, one page
  // per 64 tokens of every (layer, KV head) lane.
  const kvcache::KvCacheConfig geometry;
  const kvcache::PageShape cpu_page{static_cast<int32_t>(c.head_dim), geometry.page_tokens,
                                    geometry.logical_page_tokens, 4, true};
  const int64_t lanes = c.n_layers * c.n_kv_heads;
  const int64_t cpu_full_context =
      lanes * ((c.max_context + geometry.page_tokens - 1) / geometry.page_tokens) * static_cast<int64_t>(cpu_page.page_bytes());
  nlohmann::json j = {
      {"path", m->path},
      {"format", m->format},
      {"load_format", m->load_format == LoadFormat::kDummy ? "dummy" : "auto"},
      {"architecture", c.architecture},
      {"name", c.name},
      {"layers", c.n_layers},
      {"hidden", c.hidden},
      {"heads", c.n_heads},
      {"kv_heads", c.n_kv_heads},
      {"head_dim", c.head_dim},
      {"intermediate", c.intermediate},
      {"vocab_size", c.vocab_size},
      {"context_length", c.max_context},
      {"rope_theta", c.rope_theta},
      {"rope_layout", c.rope_layout == RopeLayout::kInterleaved ? "interleaved" : "half"},
      {"rope_scaling", c.rope_scaling.kind == RopeScaling::Kind::kNone     ? "none"
                       : c.rope_scaling.kind == RopeScaling::Kind::kLinear ? "linear"
                                                                            : "llama3"},
      {"rms_eps", c.rms_eps},
      {"tied_embeddings", c.tied_embeddings},
      {"qkv_bias", c.qkv_bias},
      {"tensor_types", m->tensor_types},
      {"chat_template", m->chat_template ? m->chat_template->name() : "none"},
      {"bos_id", c.bos_id},
      {"eos_ids", c.eos_ids},
      {"weights_bytes", m->weights.bytes},
      {"kv_bytes_per_token_fp32", kv_elems_per_token * 4},
      {"kv_bytes_per_token_bf16", kv_elems_per_token * 2},
      {"kv_bytes_full_context_bf16", kv_elems_per_token * 2 * c.max_context},
      {"kv_bytes_full_context_cpu_engine", cpu_full_context},
  };
  if (args.json) {
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";  // names may be bytes
    return 0;
  }
  const double mib = 1 << 20;
  std::cout << fmt::format("model          {} ({}{})\n", m->path, m->format,
                           m->load_format == LoadFormat::kDummy ? ", made-up weights: load_format dummy" : "")
            << fmt::format("architecture   {} \"{}\"\n", c.architecture, c.name)
            << fmt::format("shape          {} layers, hidden {}, {} heads / {} KV heads × {}, MLP {}, vocab {}\n",
                           c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.intermediate, c.vocab_size)
            << fmt::format("context        {} tokens; RoPE θ={} ({} pairs, scaling {})\n", c.max_context, c.rope_theta,
                           j["rope_layout"].get<std::string>(), j["rope_scaling"].get<std::string>())
            << fmt::format("tensor types   {}\n", j["tensor_types"].dump())
            << fmt::format("chat template  {}\n", j["chat_template"].get<std::string>())
            << fmt::format("weights        {:.1f} MiB\n", static_cast<double>(m->weights.bytes) / mib)
            << fmt::format("KV cache       {} B/token bf16 ({} B fp32); full context {:.1f} MiB bf16, {:.1f} MiB in the "
                           "CPU engine's pages (fp32 and page metadata)\n",
                           kv_elems_per_token * 2, kv_elems_per_token * 4,
                           static_cast<double>(kv_elems_per_token * 2 * c.max_context) / mib,
                           static_cast<double>(cpu_full_context) / mib)
            << fmt::format("memory needed  {:.1f} MiB on the CPU engine (weights + one dense full-context sequence's KV "
                           "pages; kv_cache_bytes ≥ {:.1f} MiB)\n",
                           (static_cast<double>(m->weights.bytes) + static_cast<double>(cpu_full_context)) / mib,
                           static_cast<double>(cpu_full_context) / mib);
  return 0;
}

}  // namespace sparseserve::cli
