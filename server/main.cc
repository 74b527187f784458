// The `sparseserve` command: info, generate, calibrate, serve.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "common/errors.h"
#include "common/logging.h"
#include "server/cli_calibrate.h"
#include "server/cli_generate.h"
#include "server/cli_info.h"
#include "server/cli_serve.h"

int main(int argc, char** argv) {
  // OpenMP reads OMP_WAIT_POLICY when its runtime loads, before main. Spinning waits stall badly
  // when cores are shared (a server next to other work, tests side by side), so default to
  // passive waits by re-executing once with the variable set; an explicit setting is kept.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    ::setenv("OMP_WAIT_POLICY", "passive", 1);
    ::execv("/proc/self/exe", argv);  // returns only on failure: carry on with the default
  }
  sparseserve::init_logging();

  CLI::App app{"sparseserve: an LLM inference server with a sparse KV cache"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off (serve: the config's log_level)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))  // the server config's names
      ->capture_default_str();
  app.parse_complete_callback([&] { sparseserve::init_logging(log_level); });

  sparseserve::cli::InfoArgs info;
  sparseserve::cli::add_info_command(app, info);
  sparseserve::cli::GenerateArgs gen;
  sparseserve::cli::add_generate_command(app, gen);
  sparseserve::cli::CalibrateArgs calibrate;
  sparseserve::cli::add_calibrate_command(app, calibrate);
  sparseserve::cli::ServeArgs serve;
  sparseserve::cli::add_serve_command(app, serve);

  CLI11_PARSE(app, argc, argv);
  try {
    if (app.got_subcommand("info")) return sparseserve::cli::run_info(info);
    if (app.got_subcommand("generate")) return sparseserve::cli::run_generate(gen);
    if (app.got_subcommand("calibrate")) return sparseserve::cli::run_calibrate(calibrate);
    if (app.got_subcommand("serve")) return sparseserve::cli::run_serve(serve);
  } catch (const sparseserve::Error& e) {
    spdlog::error("{}", e.what());
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("unexpected error: {}", e.what());
    return 2;
  }
  return 0;
}
