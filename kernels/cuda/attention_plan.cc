// The decode work split (decode_attention.h plan_decode_split): host code only.
#include <algorithm>
#include <cstdint>
#include <span>

#include "kernels/cuda/decode_attention.h"

namespace sparseserve::kernels::cuda {

DecodeSplit plan_decode_split(std::span<const int32_t> row_pages, int32_t page_tokens, int32_t target_ctas,
                              int32_t max_work, int32_t min_chunk_tokens) {
  const auto rows = static_cast<int32_t>(row_pages.size());
  check(page_tokens > 0 && target_ctas > 0, "plan_decode_split: page_tokens and target_ctas must be positive");
  check(max_work >= rows, "plan_decode_split: max_work below the row count");
  int32_t longest = 1;
  for (const int32_t n : row_pages) {
    check(n >= 0, "plan_decode_split: negative page count");
    longest = std::max(longest, n);
  }
  const int64_t min_chunk = std::max<int64_t>(1, (int64_t{min_chunk_tokens} + page_tokens - 1) / page_tokens);
  const auto pieces_of = [](int32_t n, int64_t c) { return std::max<int64_t>(1, (n + c - 1) / c); };
  const auto count = [&](int64_t c) {
    int64_t k = 0;
    for (const int32_t n : row_pages) k += pieces_of(n, c);
    return k;
  };
  // The smallest chunk (≥ min_chunk) whose pieces fit in one wave of target_ctas (the count falls as
  // the chunk grows), so no second, half-empty wave; rows ≥ target_ctas are not split at all.
  int64_t chunk = longest;
  if (rows < target_ctas && min_chunk < longest) {
    int64_t lo = min_chunk, hi = longest;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (count(mid) <= target_ctas) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    chunk = lo;
  }
  while (count(chunk) > max_work && chunk < longest) chunk = std::min<int64_t>(chunk * 2, longest);

  DecodeSplit split;
  split.chunk_pages = static_cast<int32_t>(chunk);
  split.row_splits.resize(static_cast<size_t>(rows));
  split.row_partial0.assign(static_cast<size_t>(rows), -1);
  for (int32_t r = 0; r < rows; ++r) {
    const auto pieces = static_cast<int32_t>(pieces_of(row_pages[static_cast<size_t>(r)], chunk));
    split.row_splits[static_cast<size_t>(r)] = pieces;
    if (pieces > 1) split.row_partial0[static_cast<size_t>(r)] = split.num_partials;
    for (int32_t s = 0; s < pieces; ++s) {
      DecodeWorkItem w;
      w.row = r;
      w.page_begin = static_cast<int32_t>(s * chunk);
      // The last piece takes everything after its start: row_pages may be only a hint.
      w.page_end = s + 1 == pieces ? INT32_MAX : static_cast<int32_t>((s + 1) * chunk);
      w.partial = pieces > 1 ? split.num_partials + s : -1;
      split.work.push_back(w);
    }
    if (pieces > 1) split.num_partials += pieces;
  }
  return split;
}

}  // namespace sparseserve::kernels::cuda
