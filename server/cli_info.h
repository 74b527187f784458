// `sparseserve info --model PATH`: architecture, shapes, tensor types, context, chat template, memory.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace sparseserve::cli {

struct InfoArgs {
  std::string model;
  std::string load_format = "auto";  // auto | dummy (engine/model.h)
  bool json = false;
};

void add_info_command(CLI::App& app, InfoArgs& args);
int run_info(const InfoArgs& args);

}  // namespace sparseserve::cli
