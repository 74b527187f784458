// DuoAttention head pattern TSVs and the gate -> role rules (contracts in kvcache/head_pattern.h).
#include "kvcache/head_pattern.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <numeric>
#include <system_error>

#include "common/atomic_write.h"
#include "common/errors.h"
#include "common/mapped_file.h"

namespace sparseserve::kvcache {
namespace {


[[noreturn]] void fail(const std::string& source, int64_t line, const std::string& problem) {
  throw ModelFileError(source, "line " + std::to_string(line) + ": " + problem);
}

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

// Cells of one line, split on runs of blanks.
std::vector<std::string_view> split_cells(std::string_view line) {
  std::vector<std::string_view> cells;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_blank(line[i])) ++i;
    const size_t start = i;
    while (i < line.size() && !is_blank(line[i])) ++i;
    if (i > start) cells.push_back(line.substr(start, i - start));
  }
  return cells;
}

// One gate. A leading '+' is accepted; a value below the smallest float flushes to zero; NaN,
// infinities and values beyond the float range are rejected.
float parse_gate(std::string_view cell, const std::string& source, int64_t line, size_t column) {
  const std::string where = "cell " + std::to_string(column) + " '" + std::string(cell) + "' ";
  std::string_view digits = cell;
  if (digits.size() > 1 && digits[0] == '+' && digits[1] != '-' && digits[1] != '+') {
    digits.remove_prefix(1);
  }
  const char* first = digits.data();
  const char* last = digits.data() + digits.size();
  float value = 0.0f;
  auto [end, ec] = std::from_chars(first, last, value);
  if (ec == std::errc::result_out_of_range && end == last) {
    double wide = 0.0;
    auto [wend, wec] = std::from_chars(first, last, wide);
    if (wec == std::errc() && wend == last && std::isfinite(wide) && std::fabs(wide) < 1.0) {
      return std::signbit(wide) ? -0.0f : 0.0f;
    }
    fail(source, line, where + "is out of the float range");
  }
  if (ec != std::errc() || end != last) fail(source, line, where + "is not a number");
  if (std::isnan(value)) fail(source, line, where + "is NaN");
  if (std::isinf(value)) fail(source, line, where + "is infinite");
  return value;
}

void check_gates(const HeadGates& gates) {
  if (gates.n_layers < 1 || gates.n_kv_heads < 1 ||
      gates.values.size() !=
          static_cast<size_t>(gates.n_layers) * static_cast<size_t>(gates.n_kv_heads)) {
    throw InvalidArgument("head gates: shape " + std::to_string(gates.n_layers) + " x " +
                          std::to_string(gates.n_kv_heads) + " does not match " +
                          std::to_string(gates.values.size()) + " values");
  }
}

void check_ratio(double ratio, const char* what) {
  if (!(ratio > 0.0 && ratio <= 1.0)) {
    throw InvalidArgument(std::string(what) + " must be in (0, 1], got " + std::to_string(ratio));
  }
}

// max(1, round(ratio * n)), at most n; halves round up. The ratio is usually a decimal from YAML
// (0.35 is 0.34999999999999997 as a double, so 0.35 · 90 = 31.5 would round down): the product is
// nudged by far more than that error and far less than any other distance to a half.
int32_t retrieval_count(double ratio, int64_t n) {
  const auto k = static_cast<int64_t>(std::floor(ratio * static_cast<double>(n) + 0.5 + 1e-9));
  return static_cast<int32_t>(std::clamp<int64_t>(k, 1, n));
}

}  // namespace

HeadGates parse_head_pattern(std::string_view text, const std::string& source) {
  HeadGates gates;
  int64_t line_no = 0;
  int64_t blank_line = 0;  // first blank line not yet followed by a row (0: none)
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t nl = text.find('\n', pos);
    const size_t end = nl == std::string_view::npos ? text.size() : nl;
    const std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    const std::vector<std::string_view> cells = split_cells(line);
    if (cells.empty()) {
      if (blank_line == 0) blank_line = line_no;
      continue;
    }
    if (blank_line != 0) {
      fail(source, blank_line,
           gates.n_layers == 0 ? "blank line before the first row (row i must be layer i)"
                               : "blank line between rows (row i must be layer i)");
    }
    if (gates.n_layers == 0) {
      gates.n_kv_heads = static_cast<int32_t>(cells.size());
    } else if (cells.size() != static_cast<size_t>(gates.n_kv_heads)) {
      fail(source, line_no,
           "ragged row: " + std::to_string(cells.size()) + " columns, line 1 has " +
               std::to_string(gates.n_kv_heads));
    }
    for (size_t c = 0; c < cells.size(); ++c) {
      gates.values.push_back(parse_gate(cells[c], source, line_no, c + 1));
    }
    ++gates.n_layers;
  }
  if (gates.n_layers == 0) fail(source, 1, "empty head pattern: no rows");
  return gates;
}

HeadGates read_head_pattern(const std::string& path) {
  return parse_head_pattern(read_config_file(path), path);
}

HeadGates read_head_pattern(const std::string& path, int32_t n_layers, int32_t n_kv_heads) {
  HeadGates gates = read_head_pattern(path);
  // Row i is on line i + 1: parse_head_pattern rejects blank lines before and between rows.
  if (gates.n_kv_heads != n_kv_heads) {
    fail(path, 1,
         std::to_string(gates.n_kv_heads) + " columns, but the model has " +
             std::to_string(n_kv_heads) + " KV heads");
  }
  if (gates.n_layers > n_layers) {
    fail(path, int64_t{n_layers} + 1,
         "row " + std::to_string(int64_t{n_layers} + 1) + " is beyond the model's " +
             std::to_string(n_layers) + " layers");
  }
  if (gates.n_layers < n_layers) {
    fail(path, gates.n_layers,
         "pattern ends after " + std::to_string(gates.n_layers) + " rows, but the model has " +
             std::to_string(n_layers) + " layers");
  }
  return gates;
}

std::string format_head_pattern(const HeadGates& gates) {
  check_gates(gates);
  std::string out;
  char buf[128];
  for (int32_t l = 0; l < gates.n_layers; ++l) {
    for (int32_t h = 0; h < gates.n_kv_heads; ++h) {
      const float v = gates.at(l, h);
      if (!std::isfinite(v)) {
        throw InvalidArgument("head gates: layer " + std::to_string(l) + " head " +
                              std::to_string(h) + " is not finite");
      }
      // Shortest fixed-notation text that reads back to exactly v.
      const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
      check(ec == std::errc(), "to_chars of a finite float fits 128 chars");
      if (h > 0) out += '\t';
      out.append(buf, end);
      if (std::find(buf, end, '.') == end) out += ".0";
    }
    out += '\n';
  }
  return out;
}

void write_head_pattern(const std::string& path, const HeadGates& gates) {
  write_file_atomically(path, format_head_pattern(gates));
}

HeadRoles roles_by_retrieval_ratio(const HeadGates& gates, double ratio) {
  check_gates(gates);
  check_ratio(ratio, "retrieval_ratio");
  const int32_t keep = retrieval_count(ratio, gates.n_kv_heads);
  std::vector<HeadRole> roles(gates.values.size(), HeadRole::kStreaming);
  std::vector<int32_t> order(static_cast<size_t>(gates.n_kv_heads));
  for (int32_t l = 0; l < gates.n_layers; ++l) {
    std::iota(order.begin(), order.end(), 0);
    // Stable: equal gates keep head order, so ties go to the lower head index.
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return gates.at(l, a) > gates.at(l, b); });
    for (int32_t i = 0; i < keep; ++i) {
      roles[static_cast<size_t>(l) * static_cast<size_t>(gates.n_kv_heads) +
            static_cast<size_t>(order[static_cast<size_t>(i)])] = HeadRole::kRetrieval;
    }
  }
  return HeadRoles(gates.n_layers, gates.n_kv_heads, std::move(roles));
}

HeadRoles roles_by_threshold(const HeadGates& gates, double threshold) {
  check_gates(gates);
  if (!std::isfinite(threshold)) throw InvalidArgument("head threshold must be finite");
  std::vector<HeadRole> roles(gates.values.size());
  for (size_t i = 0; i < roles.size(); ++i) {
    roles[i] = static_cast<double>(gates.values[i]) >= threshold ? HeadRole::kRetrieval
                                                                 : HeadRole::kStreaming;
  }
  return HeadRoles(gates.n_layers, gates.n_kv_heads, std::move(roles));
}

HeadRoles roles_by_global_ratio(const HeadGates& gates, double ratio) {
  check_gates(gates);
  check_ratio(ratio, "global_ratio");
  const int32_t keep = retrieval_count(ratio, static_cast<int64_t>(gates.values.size()));
  std::vector<int32_t> order(gates.values.size());
  std::iota(order.begin(), order.end(), 0);
  // Row-major index order is (layer, head) order, so stable ties go to the lower layer, then head.
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return gates.values[static_cast<size_t>(a)] > gates.values[static_cast<size_t>(b)];
  });
  std::vector<HeadRole> roles(gates.values.size(), HeadRole::kStreaming);
  for (int32_t i = 0; i < keep; ++i) {
    roles[static_cast<size_t>(order[static_cast<size_t>(i)])] = HeadRole::kRetrieval;
  }
  return HeadRoles(gates.n_layers, gates.n_kv_heads, std::move(roles));
}

}  // namespace sparseserve::kvcache
