// The attention kernels' host-side plans (attention_plan.h): decode's split, prefill's tiles.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <functional>
#include <queue>
#include <span>
#include <vector>

#include "kernels/cuda/attention_plan.h"

#include "common/errors.h"

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

std::vector<PrefillWorkItem> plan_prefill_tiles(std::span<const PrefillRow> rows, int32_t group) {
  check(group >= 1, "plan_prefill_tiles: group must be positive");
  struct Tile {
    PrefillWorkItem item;
    int64_t cost;
  };
  std::vector<Tile> tiles;
  for (size_t r = 0; r < rows.size(); ++r) {
    const PrefillRow& row = rows[r];
    const int64_t total_m = int64_t{row.n_tokens} * group;
    for (int64_t m0 = 0; m0 < total_m; m0 += kPrefillTileRows) {
      const int64_t tfirst = row.q_pos0 + m0 / group;
      const int64_t tlast = row.q_pos0 + std::min(m0 + kPrefillTileRows - 1, total_m - 1) / group;
      int64_t keys = tlast + 1;
      if (row.mask == MaskKind::kBand) keys = std::min(keys, int64_t{row.sink} + row.local + (tlast - tfirst) + 1);
      tiles.push_back({{static_cast<int32_t>(r), static_cast<int32_t>(m0)}, keys});
    }
  }
  // Rows by their most expensive tile, each row's tiles together, most expensive first.
  std::vector<int64_t> row_cost(rows.size(), 0);
  for (const Tile& t : tiles) {
    auto& c = row_cost[static_cast<size_t>(t.item.row)];
    c = std::max(c, t.cost);
  }
  std::stable_sort(tiles.begin(), tiles.end(), [&](const Tile& a, const Tile& b) {
    const int64_t ra = row_cost[static_cast<size_t>(a.item.row)], rb = row_cost[static_cast<size_t>(b.item.row)];
    if (ra != rb) return ra > rb;
    if (a.item.row != b.item.row) return a.item.row < b.item.row;
    return a.cost > b.cost;
  });
  std::vector<PrefillWorkItem> work(tiles.size());
  for (size_t i = 0; i < tiles.size(); ++i) work[i] = tiles[i].item;
  return work;
}

PrefillSplit plan_prefill_split(std::span<const PrefillRow> rows, int32_t group, int32_t page_tokens,
                                int32_t target_ctas, int32_t min_split_keys) {
  check(target_ctas > 0, "plan_prefill_split: target_ctas must be positive");
  check(page_tokens > 0 && page_tokens <= kPrefillSplitKeys && (page_tokens & (page_tokens - 1)) == 0,
        "plan_prefill_split: page_tokens must be a power of two up to kPrefillSplitKeys");
  PrefillSplit split;
  std::vector<PrefillWorkItem> tiles = plan_prefill_tiles(rows, group);
  const auto n_tiles = static_cast<int64_t>(tiles.size());
  // Estimated page-list entries of each tile.
  std::vector<int64_t> pages(tiles.size(), 0);
  int64_t longest = 0;
  for (size_t i = 0; i < tiles.size(); ++i) {
    const PrefillRow& row = rows[static_cast<size_t>(tiles[i].row)];
    const int64_t total_m = int64_t{row.n_tokens} * group;
    const int64_t tfirst = row.q_pos0 + tiles[i].m0 / group;
    const int64_t tlast = row.q_pos0 + std::min<int64_t>(tiles[i].m0 + kPrefillTileRows - 1, total_m - 1) / group;
    int64_t keys = row.new_kv != 0 ? row.q_pos0 : tlast + 1;
    if (row.mask == MaskKind::kBand) {
      // A streaming row's list holds its sink's pages and its window's (kvcache's ring), each
      // rounded out to whole pages.
      keys = std::min(keys, int64_t{row.sink} + row.local + (tlast - tfirst) + 2 * int64_t{page_tokens});
    }
    pages[i] = (keys + page_tokens - 1) / page_tokens;
    longest = std::max(longest, pages[i]);
  }
  // Chunks are whole multiples of `unit` entries (kPrefillSplitKeys keys).
  const int64_t unit = std::max<int64_t>(1, kPrefillSplitKeys / page_tokens);
  const int64_t min_keys = std::max<int64_t>(min_split_keys, kPrefillSplitKeys);
  const int64_t min_chunk = (min_keys + unit * page_tokens - 1) / (unit * page_tokens) * unit;
  const auto pieces_of = [&](size_t i, int64_t c) { return pages[i] > c ? (pages[i] + c - 1) / c : int64_t{1}; };
  const auto count = [&](int64_t c) {
    int64_t k = 0;
    for (size_t i = 0; i < tiles.size(); ++i) k += pieces_of(i, c);
    return k;
  };
  // The smallest chunk (a multiple of unit, ≥ min_chunk) whose pieces number at most `ctas`, or 0
  // when no chunk splits anything within that; the count falls as the chunk grows.
  const auto chunk_within = [&](int64_t ctas) -> int64_t {
    if (longest <= min_chunk || count(min_chunk) == n_tiles) return 0;
    int64_t lo = min_chunk / unit, hi = (longest + unit - 1) / unit;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (count(mid * unit) <= ctas) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    return count(lo * unit) == n_tiles ? 0 : lo * unit;
  };
  // Estimated time of the plan at a chunk (0: whole tiles): CTAs take the pieces in work order as
  // target_ctas slots free up, each costing its pages plus a fixed overhead (kPrefillPieceOverheadKeys).
  const int64_t overhead = std::max<int64_t>(1, kPrefillPieceOverheadKeys / page_tokens);
  const auto makespan = [&](int64_t c) {
    std::priority_queue<int64_t, std::vector<int64_t>, std::greater<>> free_at;
    for (int32_t i = 0; i < target_ctas; ++i) free_at.push(0);
    int64_t end = 0;
    const auto take = [&](int64_t pages) {
      const int64_t t = free_at.top() + pages + overhead;
      free_at.pop();
      free_at.push(t);
      end = std::max(end, t);
    };
    for (size_t i = 0; i < tiles.size(); ++i) {
      const int64_t k = c > 0 ? pieces_of(i, c) : 1;
      for (int64_t s = 0; s < k; ++s) take(s + 1 < k ? c : pages[i] - (k - 1) * c);
    }
    return end;
  };
  int64_t chunk = 0;  // 0: no split
  if (min_split_keys > 0 && n_tiles < target_ctas) {
    chunk = chunk_within(std::min(target_ctas, kPrefillSplitMaxPieces));  // one wave of pieces
  } else if (min_split_keys > 0 && n_tiles < int64_t{kPrefillSplitWaves} * target_ctas) {
    // A wave or more of tiles: a last wave part-filled with whole tiles can cost as much as a full
    // one. Pieces over more waves, when the estimate finishes them by a margin sooner.
    int64_t best = makespan(0) * 17 / 20;  // 15% sooner at least
    // Pieces only add work, and no plan beats its work spread evenly over the CTAs: when even that is
    // not sooner (nearly full waves of equal tiles), the candidates are not estimated at all (the
    // engine plans every layer of every step).
    int64_t work = 0;
    for (const int64_t p : pages) work += p + overhead;
    const int64_t first = std::max<int64_t>(2, (n_tiles + target_ctas - 1) / target_ctas);
    for (int64_t waves = first; work / target_ctas < best && waves <= kPrefillSplitWaves; ++waves) {
      const int64_t c = chunk_within(std::min<int64_t>(waves * target_ctas, kPrefillSplitMaxPieces));
      if (c == 0) continue;
      const int64_t t = makespan(c);
      if (t < best) best = t, chunk = c;
    }
  }
  split.chunk_pages = static_cast<int32_t>(chunk);
  for (size_t i = 0; i < tiles.size(); ++i) {
    const PrefillWorkItem& t = tiles[i];
    const int64_t pieces = chunk > 0 ? pieces_of(i, chunk) : 1;
    if (pieces == 1) {
      split.work.push_back(t);
      continue;
    }
    split.merge.push_back({t.row, t.m0, split.num_partials, static_cast<int32_t>(pieces)});
    for (int64_t s = 0; s < pieces; ++s) {
      PrefillWorkItem w = t;
      w.page_begin = static_cast<int32_t>(s * chunk);
      w.page_end = s + 1 == pieces ? INT32_MAX : static_cast<int32_t>((s + 1) * chunk);
      w.partial = split.num_partials + static_cast<int32_t>(s);
      split.work.push_back(w);
    }
    split.num_partials += static_cast<int32_t>(pieces);
  }
  return split;
}

}  // namespace sparseserve::kernels::cuda
