#include "server/cli_generate.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <iostream>

#include "common/errors.h"
#include "engine/chat_prompt.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "server/cli_seed.h"
#include "engine/model_profiles.h"

namespace sparseserve::cli {

namespace {

// Where --model-config auto looks for <model name>.yaml: configs/models under the working folder,
// then under the source tree the binary was built in (<tree>/build*/bin/sparseserve), so that the
// lookup does not depend on where the command runs from.
std::vector<std::string> model_config_dirs() {
  std::vector<std::string> dirs{"configs/models"};
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) dirs.push_back((exe.parent_path().parent_path().parent_path() / "configs" / "models").string());
  return dirs;
}

}  // namespace

void add_generate_command(CLI::App& app, GenerateArgs& a) {
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt or a chat message on the CPU");
  cmd->add_option("--model", a.model, "GGUF file or Hugging Face directory")->required();
  cmd->add_option("--load-format", a.load_format, "auto | dummy (made-up weights of the model's shapes)")
      ->check(CLI::IsMember({"auto", "dummy"}))
      ->capture_default_str();
  auto* p = cmd->add_option("--prompt", a.prompt, "Raw prompt text (no chat template)");
  auto* c = cmd->add_option("--chat", a.chat, "A user message, wrapped in the model's chat template");
  p->excludes(c);
  c->excludes(p);
  cmd->add_option("--system", a.system, "System message (with --chat)")->needs(c);
  cmd->add_option("--chat-template", a.chat_template,
                  "auto | chatml | llama3 (auto: the model YAML's chat_template, else the model's own)")
      ->capture_default_str()
      ->needs(c);
  cmd->add_option("--model-config", a.model_config,
                  "Model YAML with sparsity profiles and chat template (auto: configs/models/<model name>.yaml, from the "
                  "working folder or the source tree, if present; none: dense only)")
      ->capture_default_str();
  cmd->add_option("--sparsity", a.sparsity, "Sparsity profile name (default: the model YAML's default_profile)");
  cmd->add_option("--max-tokens", a.max_tokens, "Most tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", a.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-p", a.top_p)->capture_default_str();
  cmd->add_option("--top-k", a.top_k, "0 = off")->capture_default_str();
  cmd->add_option("--min-p", a.min_p)->capture_default_str();
  cmd->add_option("--repetition-penalty", a.repetition_penalty)->capture_default_str();
  cmd->add_option("--seed", a.seed, "RNG seed (same seed and input: same output)")
      ->check(seed_value());
  cmd->add_flag("--stats", a.stats, "Print timings to stderr at the end");
}

int run_generate(const GenerateArgs& a) {
  if (a.prompt.empty() && a.chat.empty()) throw InvalidArgument("give a non-empty --prompt or --chat");
  const auto model = load_model(a.model, a.chat_template, parse_load_format(a.load_format));
  const auto n_layers = static_cast<int32_t>(model->config.n_layers);
  const auto n_kv = static_cast<int32_t>(model->config.n_kv_heads);
  std::string yaml = a.model_config;
  if (yaml == "auto") {
    const std::vector<std::string> dirs = model_config_dirs();
    yaml.clear();
    for (const std::string& dir : dirs) {
      if (yaml.empty()) yaml = ModelProfiles::find_for_model(a.model, dir);
    }
    if (yaml.empty()) spdlog::info("no model YAML for {} in {}: dense attention only", a.model, fmt::join(dirs, " or "));
  }
  if (yaml == "none") yaml.clear();
  const ModelProfiles profiles = yaml.empty() ? ModelProfiles::defaults_for(n_layers, n_kv) : ModelProfiles::load(yaml, n_layers, n_kv);
  // As `serve` does: the YAML's chat template unless the command line names one.
  if (a.chat_template == "auto" && profiles.chat_template != "auto") {
    use_chat_template(*model, profiles.chat_template);
  }
  const kvcache::SparsityProfile& profile = profiles.get(a.sparsity.empty() ? profiles.default_profile : a.sparsity);
  spdlog::info("sparsity profile '{}'{}", profile.name, yaml.empty() ? "" : " from " + yaml);
  std::vector<int32_t> ids;
  int32_t end_of_turn = -1;
  if (!a.chat.empty()) {
    std::vector<ChatMessage> msgs;
    if (!a.system.empty()) msgs.push_back({"system", a.system});
    msgs.push_back({"user", a.chat});
    ChatPrompt chat = encode_chat(*model, std::move(msgs));
    ids = std::move(chat.ids);
    end_of_turn = chat.end_of_turn;
  } else {
    ids = model->tokenizer.encode(a.prompt, /*add_special=*/true, /*parse_special=*/true);
  }

  GenerateOptions opts;
  opts.max_tokens = a.max_tokens;
  opts.sampling.temperature = a.temperature;
  opts.sampling.top_p = a.top_p;
  opts.sampling.top_k = a.top_k;
  opts.sampling.min_p = a.min_p;
  opts.sampling.repetition_penalty = a.repetition_penalty;
  opts.sampling.seed = a.seed;
  opts.profile = &profile;
  opts.kv_cache = profiles.kv_cache;
  if (end_of_turn >= 0) opts.stop_ids.push_back(end_of_turn);

  CpuForward fwd(*model);
  const GenerateResult r = generate(fwd, ids, opts, [](std::string_view piece) {
    std::cout << piece << std::flush;
  });
  std::cout << "\n";
  if (a.stats) {
    std::cerr << fmt::format("prompt {} tokens in {:.3f} s ({:.1f} tok/s); generated {} tokens in {:.3f} s ({:.1f} tok/s); finish: {}\n",
                             ids.size(), r.prefill_seconds, static_cast<double>(ids.size()) / r.prefill_seconds,
                             r.tokens.size(), r.decode_seconds,
                             r.decode_seconds > 0 ? static_cast<double>(r.tokens.size()) / r.decode_seconds : 0.0,
                             r.finish_reason)
              << fmt::format("KV pages held: {} retrieval + {} streaming (one page = {} tokens of one layer/KV-head lane)\n",
                             r.kv_pages_retrieval, r.kv_pages_streaming, profiles.kv_cache.page_tokens);
  }
  return 0;
}

}  // namespace sparseserve::cli
