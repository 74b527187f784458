#include "server/cli_calibrate.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>

#include "common/atomic_write.h"
#include "common/errors.h"
#include "common/mapped_file.h"
#include "engine/model.h"
#include "engine/passkey.h"
#include "server/cli_seed.h"
#include "kvcache/head_pattern.h"

namespace sparseserve::cli {

void add_calibrate_command(CLI::App& app, CalibrateArgs& a) {
  auto* cmd = app.add_subcommand("calibrate", "Score heads on synthetic passkey prompts; write a DuoAttention head TSV");
  cmd->add_option("--model", a.model, "GGUF file or Hugging Face directory")->required();
  cmd->add_option("--out", a.out, "Output TSV (rows = layers, columns = KV heads, higher = retrieval)")->required();
  cmd->add_option_function<std::string>(
         "--method",
         [&a](const std::string& m) {
           a.options.method = m == "ablation" ? CalibrationMethod::kAblation : CalibrationMethod::kOutputChange;
         },
         "Head score: output-change (a head's attention output under its streaming band, one pass per prompt) or "
         "ablation (answer NLL increase when the head alone streams, ~n_kv_heads*n_layers/2 passes per prompt)")
      ->check(CLI::IsMember({"output-change", "ablation"}))
      ->default_str(std::string(calibration_method_name(a.options.method)));
  cmd->add_option("--prompts", a.options.prompts, "Synthetic prompts")->capture_default_str();
  cmd->add_option("--context", a.options.context_tokens, "Tokens per prompt")->capture_default_str();
  cmd->add_option("--needles", a.options.needles, "Passkeys per prompt")->capture_default_str();
  cmd->add_option("--sink", a.options.window.sink_tokens, "Streaming sink tokens")->capture_default_str();
  cmd->add_option("--local", a.options.window.local_tokens, "Streaming local tokens")->capture_default_str();
  cmd->add_option("--haystack", a.haystack,
                  "Text file the prompts are cut from (default: this host's /usr/share/common-licenses, which "
                  "differs between systems, or a built-in paragraph; the same model, options, seed and haystack "
                  "give the same result)");
  cmd->add_option("--seed", a.options.seed)
      ->check(seed_value())
      ->capture_default_str();
}

namespace {

// Checks before the model loads what would otherwise fail only after the whole calibration (up to
// tens of minutes): that --out can be written (a temporary file of a new name next to it, removed
// again; no existing file is touched), that the streaming window is shorter than the prompts and
// that --needles fits them (each passkey sentence takes about 20 tokens).
void check_calibrate_args(const CalibrateArgs& a) {
  if (a.out.empty()) throw InvalidArgument("--out: empty path");
  std::error_code ec;
  if (std::filesystem::is_directory(a.out, ec)) throw InvalidArgument("--out: " + a.out + " is a folder");
  try {
    check_can_write_next_to(a.out);
  } catch (const ModelFileError& e) {
    throw InvalidArgument("--out: " + e.problem());
  }
  if (a.options.context_tokens < 1) throw InvalidArgument("--context: must be at least 1");
  if (int64_t{a.options.window.sink_tokens} + a.options.window.local_tokens >= a.options.context_tokens) {
    throw InvalidArgument("--local: " + streaming_window_too_long(a.options));
  }
  if (a.options.needles < 1 || a.options.needles > a.options.context_tokens / 8) {
    throw InvalidArgument("--needles: must be in [1, --context / 8] (" + std::to_string(a.options.context_tokens / 8) +
                          " for --context " + std::to_string(a.options.context_tokens) + ")");
  }
}

// The --haystack file's text (read_config_file: a regular file, no FIFO, at most kMaxHaystackBytes),
// at least kMinHaystackBytes so that prompts cut from random offsets differ.
constexpr size_t kMinHaystackBytes = 1024, kMaxHaystackBytes = size_t{256} << 20;
std::string read_haystack(const std::string& path) {
  std::string text;
  try {
    text = read_config_file(path, kMaxHaystackBytes);
  } catch (const ModelFileError& e) {
    throw InvalidArgument(std::string("--haystack: ") + e.what());
  }
  if (text.size() < kMinHaystackBytes) {
    throw InvalidArgument("--haystack: " + path + " holds " + std::to_string(text.size()) + " bytes; at least " +
                          std::to_string(kMinHaystackBytes) + " are needed");
  }
  return text;
}

}  // namespace

int run_calibrate(const CalibrateArgs& a) {
  check_calibrate_args(a);
  CalibrationOptions options = a.options;
  std::string haystack_source;
  if (a.haystack.empty()) {
    Haystack h = default_haystack();
    options.haystack = std::move(h.text);
    haystack_source = std::move(h.source);
  } else {
    options.haystack = read_haystack(a.haystack);
    haystack_source = a.haystack;
  }
  const auto model = load_model(a.model);
  const auto t0 = std::chrono::steady_clock::now();
  spdlog::info("calibrating {} layers x {} KV heads by {} on {} prompts of {} tokens ({} needles, sink {}, local {}, "
               "seed {}; haystack {}, {} bytes)",
               model->config.n_layers, model->config.n_kv_heads, calibration_method_name(options.method),
               options.prompts, options.context_tokens, options.needles, options.window.sink_tokens,
               options.window.local_tokens, options.seed, haystack_source, options.haystack.size());
  const kvcache::HeadGates gates = calibrate_heads(*model, options, [&](const CalibrationProgress& p) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double left = s / p.fraction * (1.0 - p.fraction);
    if (p.layers_done == p.n_layers) {
      spdlog::info("calibrate: prompt {}/{} done ({:.0f} s elapsed, ~{:.0f} s left)", p.prompt, p.prompts, s, left);
    } else {
      spdlog::info("calibrate: prompt {}/{}: layer {}/{} scored ({:.0f} s elapsed, ~{:.0f} s left)", p.prompt,
                   p.prompts, p.layers_done, p.n_layers, s, left);
    }
  });
  kvcache::write_head_pattern(a.out, gates);
  spdlog::info("wrote {}", a.out);
  return 0;
}

}  // namespace sparseserve::cli
