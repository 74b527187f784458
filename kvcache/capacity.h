// Capacity planning: how many pages a byte budget buys, and what a sequence holds.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcache/geometry.h"

namespace sparseserve::kvcache {

// One page: page_tokens tokens of one lane, i.e. one (layer, KV head) (kvcache/README.md).
struct PageShape {
  int32_t head_dim = 0;
  int32_t page_tokens = 64;
  int32_t logical_page_tokens = 16;
  int32_t bytes_per_element = 4;  // 4 fp32 (CPU), 2 bf16 (GPU)
  bool with_metadata = true;      // min/max K per logical sub-page (fp32 on CPU, element type on GPU)

  // Bytes of one page:
  //   page_tokens * head_dim * 2 (K, V) * bytes_per_element
  //   + with_metadata ? (page_tokens / logical_page_tokens) * head_dim * 2 (min, max)
  //                     * bytes_per_element : 0.
  // InvalidArgument for a non-positive field, a page_tokens / logical_page_tokens that
  // KvCacheConfig::validate rejects (logical only with metadata), or an overflow.
  size_t page_bytes() const;
};

// Pages that fit in `budget_bytes`, floor(budget / page_bytes); throws InvalidArgument when not
// even one does or when more than INT32_MAX would (page ids are int32).
int32_t pages_for_budget(size_t budget_bytes, const PageShape& shape);

// Parses "2GiB", "512MiB", "1.5GB", "1048576" into bytes; throws InvalidArgument.
// Grammar: digits [ "." digits ] [ unit ], no sign, no spaces. Units (case-sensitive): B, KB, MB,
// GB (powers of 1000), KiB, MiB, GiB (powers of 1024); none means bytes. At most 9 decimals; a
// fractional byte count is rounded down. Empty, negative, malformed or overflowing: InvalidArgument.
size_t parse_bytes(const char* text);

}  // namespace sparseserve::kvcache
