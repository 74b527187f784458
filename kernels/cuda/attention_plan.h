// The host side of the attention kernels' plans: the mask kinds both families share, decode's
// split-KV pieces and prefill's query tiles. Pure C++ (no CUDA header), so the plans build and are
// tested everywhere, CI without nvcc included; decode_attention.h and prefill_attention.h include it.
#pragma once

#include <climits>
#include <cstdint>
#include <span>
#include <vector>

namespace sparseserve::kernels::cuda {

// Which keys j a query at position t sees (DESIGN.md §5; kernels/cpu/span_attention.h AttentionMask).
// Every kind also requires j ≤ t.
enum class MaskKind : int32_t {
  kCausal = 0,  // all j ≤ t
  kBand = 1,    // streaming Λ: j < sink or t − j < local (token-exact at both edges)
  kBlocks = 2,  // block mask rows (prefill only): allowed[t / B][j / B]
};

// ---- Decode ----------------------------------------------------------------------------------

// A piece of work: row `row`, its list entries [page_begin, page_end) (relative to the row's first
// entry, clipped at run time to the row's actual count). partial ≥ 0: the CTA writes an fp32
// partial result to slot `partial` for the merge; −1: the row has one piece, written as bf16.
struct DecodeWorkItem {
  int32_t row = 0;
  int32_t page_begin = 0;
  int32_t page_end = 0;
  int32_t partial = -1;
};
static_assert(sizeof(DecodeWorkItem) == 16);

// The host-side work split. A row with several pieces is merged (log-sum-exp) by the CTA that
// finishes its last piece.
struct DecodeSplit {
  int32_t chunk_pages = 0;              // pages per piece (the last piece of a row takes the rest)
  std::vector<DecodeWorkItem> work;     // in row order
  std::vector<int32_t> row_splits;      // [rows]: pieces of each row (≥ 1)
  std::vector<int32_t> row_partial0;    // [rows]: first partial slot of rows with > 1 piece, else −1
  int32_t num_partials = 0;
};

// Splits rows into pieces of chunk_pages pages: the smallest chunk (≥ min_chunk_tokens / page_tokens
// pages) whose pieces fit in target_ctas (one wave), no split when rows ≥ target_ctas; never more
// than max_work pieces, always at least one per row.
// row_pages[r]: the row's page count, or an upper bound when the list is built on the device (the
// last piece of each row covers everything after its start, so a wrong hint costs balance, not
// keys).
DecodeSplit plan_decode_split(std::span<const int32_t> row_pages, int32_t page_tokens, int32_t target_ctas,
                              int32_t max_work, int32_t min_chunk_tokens);

// ---- Prefill ---------------------------------------------------------------------------------

// One (sequence, KV head) row: the chunk's queries for the query heads of one GQA group.
struct PrefillRow {
  int32_t q_row0 = 0;    // token row of the chunk's first query in q / o (and in k_new / v_new)
  int32_t n_tokens = 0;  // queries at positions q_pos0 .. q_pos0 + n_tokens − 1
  int32_t q_pos0 = 0;
  int32_t kv_head = 0;   // query heads kv_head*group .. kv_head*group + group − 1
  MaskKind mask = MaskKind::kCausal;
  int32_t sink = 0;      // kBand
  int32_t local = 0;     // kBand
  // 1: after its pages the row also sees the chunk's own keys, token i at k_new/v_new row q_row0 + i,
  // position q_pos0 + i (the row's page positions must all be < q_pos0). 0: pages only.
  int32_t new_kv = 0;
  // kBlocks: rows of allowed bytes [n_qblocks][n_kblocks] at PrefillArgs::block_allowed +
  // block_offset, query block b (= position / block_tokens) at row b − first_qblock
  // (kernels/cpu/block_sparse.h BlockMask). A query's block row must exist: plan() checks that
  // first_qblock ≤ q_pos0 / block_tokens; the rows up to the last query's block are the caller's.
  int64_t block_offset = 0;
  int32_t first_qblock = 0;
  int32_t n_kblocks = 0;
  int32_t block_tokens = 0;  // kBlocks: the mask's block size (tokens), > 0

  bool operator==(const PrefillRow&) const = default;
};
static_assert(sizeof(PrefillRow) == 56);

// A CTA's work: row `row`, packed query rows m0 .. m0 + kPrefillTileRows − 1 of it (packed row m = token m / group,
// head m % group of the group: the group's heads share every K/V tile).
inline constexpr int32_t kPrefillTileRows = 128;  // packed query rows per CTA, both prefill kernels

// Keys per tile of the Hopper prefill kernel. It walks a launch's block-mask rows by gathered units
// (prefill::BlockWalk::kUnits) when some row's blocks are smaller than a tile (sm90_small_blocks);
// otherwise by tiles (kTiles), whose order the units would only repeat.
inline constexpr int32_t kSm90KeyTile = 128;
inline constexpr bool sm90_small_blocks(int32_t block_tokens) { return block_tokens < kSm90KeyTile; }

// Rows per TMA box of a Hopper prefill launch whose smallest kBlocks block is min_block_tokens
// (INT32_MAX: none), the smallest unit its walk may gather: the page, or when that block holds fewer
// keys than a page (a kUnits launch: pages hold at most a tile), the largest power of two within it,
// at least 16 (so a block under a page is read alone, not with its page's other blocks).
inline constexpr int32_t sm90_box_tokens(int32_t min_block_tokens, int32_t page_tokens) {
  if (min_block_tokens >= page_tokens) return page_tokens;
  int32_t box = 16;
  while (box * 2 <= min_block_tokens) box *= 2;
  return box;
}

// A CTA's work item. With a key split (plan_prefill_split) the CTA reads only the row's page-list
// entries [page_begin, page_end) (relative to the row's first entry, clipped at run time to its
// actual count; the row's new keys, if any, only in the piece whose page_end is INT32_MAX) and, when
// partial ≥ 0, writes fp32 partial results to slot `partial` for the merge instead of bf16 output.
struct PrefillWorkItem {
  int32_t row = 0;
  int32_t m0 = 0;
  int32_t page_begin = 0;
  int32_t page_end = INT32_MAX;
  int32_t partial = -1;
  int32_t unused = 0;  // keeps the item a multiple of 8 bytes (the plan blob's rows follow it)
};
static_assert(sizeof(PrefillWorkItem) == 24);

// Query tiles of the rows (cost: estimated keys per tile): rows in order of their most expensive
// tile, a row's tiles together and most expensive first. The CTAs running at once then read one
// row's K/V, which stays in L2 (a 64K-token row of one KV head is 32 MB; all rows together are
// not), and the last wave holds short tiles.
std::vector<PrefillWorkItem> plan_prefill_tiles(std::span<const PrefillRow> rows, int32_t group);

// ---- Prefill's key split -----------------------------------------------------------------------
// A few query tiles over a long history (a short chunk after a cached prefix, the last chunk of a
// long prompt) fill few CTAs, each walking every key. Such tiles are split along their keys, as
// decode splits its rows: each piece is a CTA over a range of the row's pages writing an fp32
// partial result, and a merge folds a tile's pieces (log-sum-exp) into its bf16 output.

// The pieces of one split tile: packed rows m0 .. m0 + kPrefillTileRows − 1 of row `row`, in partial
// slots partial0 .. partial0 + pieces − 1.
struct PrefillMergeItem {
  int32_t row = 0;
  int32_t m0 = 0;
  int32_t partial0 = 0;
  int32_t pieces = 0;
};
static_assert(sizeof(PrefillMergeItem) == 16);

struct PrefillSplit {
  std::vector<PrefillWorkItem> work;    // a split tile's pieces together, in key order
  std::vector<PrefillMergeItem> merge;  // one per split tile
  int32_t num_partials = 0;
  int32_t chunk_pages = 0;              // pages per piece (0: nothing split)
};

// Pieces hold whole multiples of this many keys (the Hopper kernel's key tile), so that no piece but
// a row's last ends in a part-filled tile.
inline constexpr int32_t kPrefillSplitKeys = 128;

// A launch of at least a wave of tiles splits only into pieces over at most this many waves, and
// never into more than kPrefillSplitMaxPieces pieces (which bounds the merge's workspace:
// prefill_split_workspace_bytes); a piece's fixed cost (its start, Q, its partial's store and merge)
// counted as this many keys of walk in the plan's estimate.
inline constexpr int32_t kPrefillSplitWaves = 4;
inline constexpr int32_t kPrefillSplitMaxPieces = 1024;
inline constexpr int32_t kPrefillPieceOverheadKeys = 512;

// Bytes of the workspace a key split can need at most (fp32 rows and lse of kPrefillSplitMaxPieces
// pieces), for sizing device memory ahead.
inline constexpr int64_t prefill_split_workspace_bytes(int32_t head_dim) {
  return int64_t{4} * kPrefillSplitMaxPieces * kPrefillTileRows * (head_dim + 1);
}

// Tiles as plan_prefill_tiles orders them; when they are fewer than target_ctas (one wave of
// resident CTAs), tiles split into pieces of chunk_pages page-list entries: the smallest chunk, at
// least min_split_keys keys and a multiple of kPrefillSplitKeys keys, whose pieces fit in
// target_ctas (at most kPrefillSplitMaxPieces). With a wave or more of tiles (below
// kPrefillSplitWaves waves), the same rule for a target of two or more waves of pieces, the one that
// an estimate finishes soonest (CTAs take the work in order as slots free up, each piece its pages
// plus kPrefillPieceOverheadKeys), and only when that is 15% sooner than whole tiles: the last wave
// of whole tiles part-filled costs as long as a full one. Every piece starts on a page, which keeps
// the kernels' key tiles, gathered units and TMA boxes aligned. A tile's page count is estimated
// from its last query's position (pages before the chunk for rows with new_kv), for band rows at
// most their sink and window (the lists of streaming heads hold only those): the last piece takes
// every entry after its start, so a wrong estimate costs balance, not keys. page_tokens: a power of
// two ≤ kPrefillSplitKeys.
// min_split_keys ≤ 0: no split.
PrefillSplit plan_prefill_split(std::span<const PrefillRow> rows, int32_t group, int32_t page_tokens,
                                int32_t target_ctas, int32_t min_split_keys);

}  // namespace sparseserve::kernels::cuda
