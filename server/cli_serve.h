// `sparseserve serve`: loads the model and its sparsity profiles, starts the engine, the OpenAI
// HTTP front end and the gRPC front end, and serves until SIGTERM or SIGINT.
//
// Settings: --config FILE (configs/server.yaml) and one flag per key (server/server_config.h),
// flags winning over the file. /health answers 503 while the model loads and 200 once it serves.
// Shutdown (SIGTERM/SIGINT): /health and new requests answer 503, requests in flight may finish
// for shutdown_grace_seconds and are aborted after it, the servers stop, the process exits 0.
// A second signal exits at once (status 1).
#pragma once

#include <CLI/CLI.hpp>
#include <map>
#include <string>

namespace sparseserve::cli {

struct ServeArgs {
  std::string config;                           // YAML path; empty: defaults and flags only
  std::map<std::string, std::string> values;    // key -> flag text (when given)
  std::map<std::string, CLI::Option*> options;  // key -> its flag, to see which were given
  // Boolean settings (default true or false) also take vLLM's forms: `--enable-x` alone is true,
  // `--no-enable-x` is false.
  std::map<std::string, bool> negated;
  std::map<std::string, CLI::Option*> negations;
};

void add_serve_command(CLI::App& app, ServeArgs& args);
int run_serve(const ServeArgs& args);

}  // namespace sparseserve::cli
