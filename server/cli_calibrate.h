// `sparseserve calibrate --model PATH --out FILE.tsv`: scores every (layer, KV head) on synthetic
// multi-passkey prompts (engine/calibrate.h) and writes a DuoAttention-format head pattern TSV.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "engine/calibrate.h"

namespace sparseserve::cli {

struct CalibrateArgs {
  std::string model;
  std::string out;
  std::string haystack;  // --haystack FILE; empty: default_haystack()
  CalibrationOptions options;
};

void add_calibrate_command(CLI::App& app, CalibrateArgs& args);
int run_calibrate(const CalibrateArgs& args);

}  // namespace sparseserve::cli
