// The --seed option of the commands that sample (generate, calibrate): a uint64 given in decimal.
#pragma once

#include <CLI/CLI.hpp>

#include <charconv>
#include <cstdint>
#include <string>

namespace sparseserve::cli {

// A decimal integer in [0, 2^64). CLI11 alone wraps "-1" to 2^64 - 1 and saturates values past the
// range, so the text is checked in full first.
inline CLI::Validator seed_value() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        uint64_t v = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        return ec == std::errc() && end == s.data() + s.size() && !s.empty() ? std::string()
                                                                              : "must be an integer in [0, 2^64)";
      },
      "UINT64");
}

}  // namespace sparseserve::cli
