// DuoAttention head patterns: per (layer, KV head) gate values read from / written to TSV, and the
// rules that turn gates into retrieval/streaming roles (DESIGN.md §6, kvcache/README.md).
//
// File layout (DuoAttention's, so published patterns load as they are): one row per layer, one
// column per KV head, a float gate per cell (higher = more retrieval-like), cells separated by
// tabs or spaces. No header, no comments. Trailing whitespace, CRLF line ends and blank lines after
// the last row are tolerated; a blank line between rows is not (row i must be layer i).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/head_roles.h"

namespace sparseserve::kvcache {

struct HeadGates {
  int32_t n_layers = 0;
  int32_t n_kv_heads = 0;
  std::vector<float> values;  // row-major [n_layers][n_kv_heads]; finite

  float at(int32_t layer, int32_t head) const {
    return values[static_cast<size_t>(layer) * static_cast<size_t>(n_kv_heads) +
                  static_cast<size_t>(head)];
  }
};

// Parses TSV text. Errors throw ModelFileError(source, "line N: problem"): empty pattern, blank
// line between rows, a cell that is not a number (or NaN / infinite / out of float range), a row
// whose column count differs from the first row's. A value below the smallest float reads as 0.
HeadGates parse_head_pattern(std::string_view text, const std::string& source);

// Reads and parses `path`; ModelFileError(path, ...) when it cannot be read or is malformed.
HeadGates read_head_pattern(const std::string& path);
// Same, and the shape must be (n_layers, n_kv_heads): a wrong row or column count is reported at
// the line where it shows.
HeadGates read_head_pattern(const std::string& path, int32_t n_layers, int32_t n_kv_heads);

// Text in DuoAttention's layout: rows = layers, tab-separated, '\n' after every row, plain decimal
// floats (shortest text that reads back to the same float; always with a '.', never an exponent).
// Throws InvalidArgument when the shape is empty or inconsistent or a gate is not finite.
std::string format_head_pattern(const HeadGates& gates);
// Writes format_head_pattern(gates) to `path` (through a temporary file renamed over it, so a
// reader never sees half a file). ModelFileError(path, ...) on I/O failure.
void write_head_pattern(const std::string& path, const HeadGates& gates);

// Role rules. Each throws InvalidArgument for a value outside its range.
//
// Per layer, the max(1, round(ratio * n_kv_heads)) heads with the highest gates are retrieval, ties
// going to the lower head index. Every layer gets the same count, so per-sequence memory is exact
// (kvcache/README.md). ratio ∈ (0, 1]; round is half away from zero (0.5 of 3 heads -> 2).
HeadRoles roles_by_retrieval_ratio(const HeadGates& gates, double ratio);
// gate ≥ threshold is retrieval. Counts may differ between layers (a layer may have none); they are
// returned as they are. threshold must be finite.
HeadRoles roles_by_threshold(const HeadGates& gates, double threshold);
// DuoAttention's global ranking: all (layer, head) pairs ranked together by gate; the top
// max(1, round(ratio * n_layers * n_kv_heads)) are retrieval, ties going to the lower layer, then
// the lower head. Counts may differ between layers. ratio ∈ (0, 1].
HeadRoles roles_by_global_ratio(const HeadGates& gates, double ratio);

}  // namespace sparseserve::kvcache
