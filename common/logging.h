// Process-wide logging set-up: spdlog's default logger writes to stderr (stdout stays for program
// output), with one pattern for every binary.
#pragma once

#include <string>

namespace sparseserve {

// level: trace | debug | info | warn | error | off. Safe to call more than once.
void init_logging(const std::string& level = "info");

}  // namespace sparseserve
