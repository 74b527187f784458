// `sparseserve generate`: one prompt or chat message, text streamed to stdout as it is produced.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>

namespace sparseserve::cli {

struct GenerateArgs {
  std::string model;
  std::string load_format = "auto";  // auto | dummy (engine/model.h)
  std::string prompt;
  std::string chat;
  std::string system;
  std::string chat_template = "auto";
  std::string model_config = "auto";  // model YAML with sparsity profiles; auto: configs/models/<model>.yaml
  std::string sparsity;                // profile name; empty: the YAML's default profile
  int64_t max_tokens = 256;
  float temperature = 0.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  std::optional<uint64_t> seed;
  bool stats = false;
};

void add_generate_command(CLI::App& app, GenerateArgs& args);
int run_generate(const GenerateArgs& args);

}  // namespace sparseserve::cli
