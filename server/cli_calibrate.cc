#include "server/cli_calibrate.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "engine/model.h"
#include "kvcache/head_pattern.h"

namespace sparseserve::cli {

void add_calibrate_command(CLI::App& app, CalibrateArgs& a) {
  auto* cmd = app.add_subcommand("calibrate", "Score heads on synthetic passkey prompts; write a DuoAttention head TSV");
  cmd->add_option("--model", a.model, "GGUF file or Hugging Face directory")->required();
  cmd->add_option("--out", a.out, "Output TSV (rows = layers, columns = KV heads, higher = retrieval)")->required();
  cmd->add_option("--prompts", a.options.prompts, "Synthetic prompts")->capture_default_str();
  cmd->add_option("--context", a.options.context_tokens, "Tokens per prompt")->capture_default_str();
  cmd->add_option("--needles", a.options.needles, "Passkeys per prompt")->capture_default_str();
  cmd->add_option("--sink", a.options.window.sink_tokens, "Streaming sink tokens")->capture_default_str();
  cmd->add_option("--local", a.options.window.local_tokens, "Streaming local tokens")->capture_default_str();
  cmd->add_option("--seed", a.options.seed)->capture_default_str();
}

int run_calibrate(const CalibrateArgs& a) {
  const auto model = load_model(a.model);
  const auto t0 = std::chrono::steady_clock::now();
  spdlog::info("calibrating {} layers x {} KV heads on {} prompts of {} tokens ({} needles, sink {}, local {})",
               model->config.n_layers, model->config.n_kv_heads, a.options.prompts, a.options.context_tokens,
               a.options.needles, a.options.window.sink_tokens, a.options.window.local_tokens);
  const kvcache::HeadGates gates = calibrate_heads(*model, a.options, [&](int done, int total) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    spdlog::info("calibrate: prompt {}/{} done ({:.0f} s elapsed, ~{:.0f} s left)", done, total, s,
                 s / done * (total - done));
  });
  kvcache::write_head_pattern(a.out, gates);
  spdlog::info("wrote {}", a.out);
  return 0;
}

}  // namespace sparseserve::cli
