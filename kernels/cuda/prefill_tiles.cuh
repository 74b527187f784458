// Device building blocks shared by the two paged prefill kernels (prefill_attention.cu: mma.sync,
// prefill_attention_sm90.cu: wgmma): the kernel parameters, the CTA's key-tile walk (which tiles some
// query of the CTA may see, found from the monotone page positions) and the per-tile test of a
// group of query rows (skip / compute without masks / mask per element). BN: key slots per tile.
// Device code: include from .cu files only.
#pragma once

#ifndef __CUDACC__
#error "prefill_tiles.cuh holds device code: include it from .cu files only"
#endif

#include <cuda.h>

#include <climits>
#include <cstdint>
#include <source_location>

#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/prefill_attention.h"

namespace sparseserve::kernels::cuda::prefill {

using attn::bf16;

struct PrefillParams {
  const bf16* q;
  int64_t q_stride;
  bf16* o;
  int64_t o_stride;
  const bf16* k_new;
  const bf16* v_new;
  int64_t new_stride;
  attn::PoolView pool;
  const int32_t* indptr;
  const int32_t* page_ids;
  const int32_t* page_pos0;
  const int32_t* page_len;
  const uint8_t* block_allowed;
  const int32_t* counts;  // {work items}
  const PrefillWorkItem* work;
  const PrefillRow* rows;
  // Work items with partial ≥ 0 (a key split, attention_plan.h): slot s holds kPrefillTileRows packed
  // rows, O normalised at partial_o + (s·kPrefillTileRows + r)·D (fp32) and the log2-domain
  // log-sum-exp of the scaled scores at partial_lse[s·kPrefillTileRows + r] (−inf: no key seen).
  float* partial_o;
  float* partial_lse;
  int32_t group;
  float scale_log2;  // softmax scale · log2(e)
  int32_t skip_tiles;
};


// Whether any (all = false) or every (all = true) pair of query block rows qb0..qb1 (relative to the
// row's first_qblock) and key blocks kb0..kb1 is allowed. Long ranges answer conservatively.
__device__ __forceinline__ bool block_pairs(const uint8_t* rows, int32_t n_kblocks, int32_t qb0, int32_t qb1,
                                            int32_t kb0, int32_t kb1, bool all) {
  if (all && kb1 >= n_kblocks) return false;
  kb1 = min(kb1, n_kblocks - 1);
  if (kb0 > kb1 || qb0 > qb1) return false;
  if ((qb1 - qb0 + 1) * (kb1 - kb0 + 1) > 32) return !all;
  for (int32_t qb = qb0; qb <= qb1; ++qb) {
    const uint8_t* r = rows + static_cast<int64_t>(qb) * n_kblocks;
    for (int32_t kb = kb0; kb <= kb1; ++kb) {
      const bool ok = r[kb] != 0;
      if (ok && !all) return true;
      if (!ok && all) return false;
    }
  }
  return all;
}

// What the tile walk needs about the CTA.
struct TileScan {
  attn::RowKeys rk;
  int32_t shift;          // log2(P)
  int32_t n_tiles;
  int32_t tlo, thi;       // positions of the CTA's first and last query
  attn::MaskParams mp;
  const uint8_t* blocks;  // the row's block rows (row 0 = first_qblock), kBlocks only
  int32_t first_qblock;
  int32_t unit_floor;     // log2 of the smallest unit a gathered walk takes: log2(P), or log2 of the
                          // Hopper kernel's TMA box rows when a launch reads blocks under a page alone
};

// Bounds of the key positions in slots u0 .. u1 (u0 ≤ u1 < end_slot): kmin ≤ every key ≤ kmax (page
// entries hold ascending, non-overlapping positions, new keys follow the pages). kmin is u0's
// position when u0 is a multiple of P or past the pages, else the start of u0's page.
__device__ __forceinline__ void slot_bounds(const TileScan& ts, int32_t u0, int32_t u1, int32_t& kmin,
                                            int32_t& kmax) {
  const attn::RowKeys& rk = ts.rk;
  kmin = u0 < rk.page_slots ? __ldg(rk.page_pos0 + (u0 >> ts.shift)) : rk.new_pos0 + (u0 - rk.page_slots);
  kmax = u1 < rk.page_slots ? __ldg(rk.page_pos0 + (u1 >> ts.shift)) + (u1 & ((1 << ts.shift) - 1))
                            : rk.new_pos0 + (u1 - rk.page_slots);
}

// slot_bounds with kmin u0's own position wherever u0 lies (a unit or run under a page).
__device__ __forceinline__ void exact_slot_bounds(const TileScan& ts, int32_t u0, int32_t u1, int32_t& kmin,
                                                  int32_t& kmax) {
  slot_bounds(ts, u0, u1, kmin, kmax);
  if (u0 < ts.rk.page_slots) kmin += u0 & ((1 << ts.shift) - 1);
}

// Bounds of the key positions in tile k. Both are nondecreasing in k.
template <int BN>
__device__ __forceinline__ void tile_bounds(const TileScan& ts, int32_t k, int32_t& kmin, int32_t& kmax) {
  const int32_t u0 = k * BN;
  slot_bounds(ts, u0, min(u0 + BN, ts.rk.end_slot) - 1, kmin, kmax);
}

// Smallest k in [lo, hi) with pred(k), or hi, for a monotone pred (false ... false true ... true).
// Warp-cooperative 32-ary search (each step narrows the range 32-fold); every lane gets the answer.
template <class Pred>
__device__ __forceinline__ int32_t warp_first_true(int32_t lo, int32_t hi, Pred pred) {
  const int lane = threadIdx.x & 31;
  while (lo < hi) {
    const int32_t step = (hi - lo + 31) / 32;
    const int32_t probe = lo + lane * step;
    const unsigned mask = __ballot_sync(0xffffffffu, probe >= hi || pred(probe));
    if (mask == 0) {
      lo += 31 * step + 1;
      continue;
    }
    const int f = __ffs(mask) - 1;
    if (f == 0) return lo;
    hi = min(hi, lo + f * step);  // probe f holds (or is past the range)
    lo += (f - 1) * step + 1;     // probe f − 1 does not
  }
  return lo;
}

// The key tiles a CTA visits, from the page positions (kmin / kmax of a tile are monotone in k):
// tiles before `end` (the first tile starting after the last query), and for the band only those
// before `sink_end` (a key < sink) or from `window` on (a key inside some query's window). Block
// masks test each tile against the mask rows (32 tiles per warp step).
struct TileWalk {
  int32_t end, sink_end, window;
};

template <int BN>
__device__ __forceinline__ TileWalk plan_walk(const TileScan& ts, bool skip_tiles) {
  TileWalk w{ts.n_tiles, ts.n_tiles, 0};
  if (!skip_tiles) return w;
  w.end = warp_first_true(0, ts.n_tiles, [&](int32_t k) {
    int32_t kmin, kmax;
    tile_bounds<BN>(ts, k, kmin, kmax);
    return kmin > ts.thi;
  });
  if (ts.mp.kind == static_cast<int32_t>(MaskKind::kBand)) {
    w.sink_end = warp_first_true(0, w.end, [&](int32_t k) {
      int32_t kmin, kmax;
      tile_bounds<BN>(ts, k, kmin, kmax);
      return kmin >= ts.mp.sink;
    });
    w.window = warp_first_true(w.sink_end, w.end, [&](int32_t k) {
      int32_t kmin, kmax;
      tile_bounds<BN>(ts, k, kmin, kmax);
      return static_cast<int64_t>(kmax) > static_cast<int64_t>(ts.tlo) - ts.mp.local;
    });
  }
  return w;
}

// Whether some query of the CTA may see a key of tile k under its block mask.
template <int BN>
__device__ __forceinline__ bool tile_in_block_mask(const TileScan& ts, int32_t k) {
  int32_t kmin, kmax;
  tile_bounds<BN>(ts, k, kmin, kmax);
  const int32_t B = ts.mp.block_tokens;
  return block_pairs(ts.blocks, ts.mp.n_kblocks, ts.tlo / B - ts.first_qblock, ts.thi / B - ts.first_qblock, kmin / B,
                     min(kmax, ts.thi) / B, false);
}

// Under a block mask, which of the 32 tiles from `base` the CTA must visit (bit i: tile base + i),
// kept between next_tile calls: a walk tests each tile once, not once per call (base −1: none yet).
struct BlockWindow {
  int32_t base = -1;
  unsigned visit = 0;
};

// The first tile ≥ k that the CTA must visit, or n_tiles; k does not decrease from call to call.
// Every lane of every warp gets the same answer (block masks: a warp-cooperative scan, 32 tiles a
// step, remembered in `win`).
template <int BN>
__device__ __forceinline__ int32_t next_tile(const TileScan& ts, const TileWalk& w, int32_t k, bool skip_tiles,
                                             BlockWindow& win) {
  if (!skip_tiles) return min(k, ts.n_tiles);
  if (ts.mp.kind == static_cast<int32_t>(MaskKind::kBand) && k >= w.sink_end) k = max(k, w.window);
  if (ts.mp.kind == static_cast<int32_t>(MaskKind::kBlocks)) {
    const int lane = threadIdx.x & 31;
    while (k < w.end) {
      if (win.base < 0 || k >= win.base + 32) {
        win.base = k;
        win.visit = __ballot_sync(0xffffffffu, k + lane < w.end && tile_in_block_mask<BN>(ts, k + lane));
      }
      const unsigned ahead = win.visit & (0xffffffffu << (k - win.base));  // tiles k .. base + 31
      if (ahead != 0) return win.base + __ffs(ahead) - 1;
      k = win.base + 32;
    }
  }
  return k < w.end ? k : ts.n_tiles;
}

// Under a block mask, next_tile's window together with, per tile of the window, whether every block
// pair of a consumer group's queries (query block rows qb0[g] .. qb1[g], relative to first_qblock)
// and the tile's key range is allowed (bit i of all[g]: tile base + i), from the same scan: the
// Hopper kernel's producer reads a tile's answer from here instead of loading the mask rows per
// tile. Only for kBlocks rows with skip_tiles (the kTiles instance).
struct BlockWindowBits {
  int32_t base = -1;
  unsigned visit = 0;
  unsigned all[2] = {0, 0};
  int32_t qb0[2] = {0, 0}, qb1[2] = {0, 0};
  // Bit g: every block pair of group g and tile k (in this window) is allowed.
  __device__ __forceinline__ int32_t all_bits(int32_t k) const {
    return static_cast<int32_t>(((all[0] >> (k - base)) & 1u) | (((all[1] >> (k - base)) & 1u) << 1));
  }
};

template <int BN>
__device__ __forceinline__ int32_t next_tile_bits(const TileScan& ts, const TileWalk& w, int32_t k,
                                                  BlockWindowBits& win) {
  const int lane = threadIdx.x & 31;
  const int32_t B = ts.mp.block_tokens;
  while (k < w.end) {
    if (win.base < 0 || k >= win.base + 32) {
      win.base = k;
      const int32_t t = k + lane;
      bool visit = false, all0 = false, all1 = false;
      if (t < w.end) {
        int32_t kmin, kmax;
        tile_bounds<BN>(ts, t, kmin, kmax);
        visit = block_pairs(ts.blocks, ts.mp.n_kblocks, ts.tlo / B - ts.first_qblock, ts.thi / B - ts.first_qblock,
                            kmin / B, min(kmax, ts.thi) / B, false);
        all0 = visit && block_pairs(ts.blocks, ts.mp.n_kblocks, win.qb0[0], win.qb1[0], kmin / B, kmax / B, true);
        all1 = visit && block_pairs(ts.blocks, ts.mp.n_kblocks, win.qb0[1], win.qb1[1], kmin / B, kmax / B, true);
      }
      win.visit = __ballot_sync(0xffffffffu, visit);
      win.all[0] = __ballot_sync(0xffffffffu, all0);
      win.all[1] = __ballot_sync(0xffffffffu, all1);
    }
    const unsigned ahead = win.visit & (0xffffffffu << (k - win.base));  // tiles k .. base + 31
    if (ahead != 0) return win.base + __ffs(ahead) - 1;
    k = win.base + 32;
  }
  return ts.n_tiles;
}


// ---- The gathered walk of block-mask rows (the Hopper kernel's kUnits instance) -------------------
// With blocks smaller than a tile, a tile of consecutive keys mostly holds blocks that no query of
// the CTA may see next to ones it must. So the producer walks *units* instead: U = 2^ushift
// consecutive slots (the largest power of two ≤ the block size, within the launch's TMA box rows ..
// BN; the box is the page unless blocks are smaller), each of whole boxes of pages or of new keys,
// and gathers the units some query of the CTA may see, BN / U to a tile, in key order. The consumers
// mask by position, so a tile's keys need not be contiguous.

// log2 of the unit: floor(log2(block_tokens)) within unit_floor .. log2(BN).
template <int BN>
__device__ __forceinline__ int32_t unit_shift(const TileScan& ts) {
  return min(max(31 - __clz(ts.mp.block_tokens), ts.unit_floor), 31 - __clz(BN));
}

// log2 of a unit's runs whose mask bits the consumers read (UnitTile::flags bit 2): the largest power
// of two dividing block_tokens, within 8 .. the unit. With pages of contiguous positions from a
// multiple of it (as a prompt's history lies), each run then holds keys of one key block, also when
// a unit spans several blocks (blocks under 16 keys, under a page in a launch whose boxes are pages,
// or sizes not a power of two: B = 48 has units of 32 and runs of 16).
template <int BN>
__device__ __forceinline__ int32_t run_shift(const TileScan& ts) {
  return min(max(__ffs(ts.mp.block_tokens) - 1, 3), unit_shift<BN>(ts));
}

// The walk's state, per producer warp (every lane holds the same): which units are left, and a
// window of 32 units from `base` (−1: none yet) with, per unit (bit i: unit base + i), whether some
// query of the CTA may see a key of it (visit), whether every block pair of consumer group g's
// queries and its key range is allowed (all[g]), and whether the keys of each of its runs
// (run_shift) lie in one key block (single).
// (unit_shift, qb0 and qb1 are recomputed where needed: the producer has no registers to spare.)
struct UnitWalk {
  int32_t end;           // units from `end` on hold no key a query of the CTA may see
  int32_t cursor;        // the next unit to consider
  // Query block rows (relative to first_qblock): the CTA's are qb0 .. qb1 (from ts.tlo, ts.thi),
  // consumer group 0's qb0 .. mid0, group 1's mid1 .. qb1.
  int32_t mid0, mid1;
  int32_t base;
  unsigned visit, all[2], single;
};

// Walk state for a CTA whose producer planned `w` (skip_tiles); consumer group 0's last query is at
// position thi0, group 1's first at tlo1 (the CTA's first and last: ts.tlo, ts.thi).
template <int BN>
__device__ __forceinline__ UnitWalk plan_unit_walk(const TileScan& ts, const TileWalk& w, int32_t thi0,
                                                   int32_t tlo1) {
  const int32_t B = ts.mp.block_tokens, ushift = unit_shift<BN>(ts);
  UnitWalk uw;
  uw.end = min((ts.rk.end_slot + (1 << ushift) - 1) >> ushift, (w.end * BN) >> ushift);
  uw.cursor = 0;
  uw.mid0 = thi0 / B - ts.first_qblock;
  uw.mid1 = tlo1 / B - ts.first_qblock;
  uw.base = -1;
  uw.visit = uw.all[0] = uw.all[1] = uw.single = 0u;
  return uw;
}

// The first unit ≥ k some query of the CTA may see, or uw.end (a warp-cooperative scan, 32 units a
// step, remembered in the window). k does not decrease from call to call.
template <int BN>
__device__ __forceinline__ int32_t next_unit(const TileScan& ts, UnitWalk& uw, int32_t k) {
  const int lane = threadIdx.x & 31;
  const int32_t B = ts.mp.block_tokens;
  while (k < uw.end) {
    if (uw.base < 0 || k >= uw.base + 32) {
      uw.base = k;
      const int32_t c = k + lane, ushift = unit_shift<BN>(ts);
      const int32_t qb0 = ts.tlo / B - ts.first_qblock, qb1 = ts.thi / B - ts.first_qblock;
      bool visit = false, all0 = false, all1 = false, single = false;
      if (c < uw.end) {
        int32_t kmin, kmax;
        exact_slot_bounds(ts, c << ushift, min((c + 1) << ushift, ts.rk.end_slot) - 1, kmin, kmax);
        const int32_t kb0 = kmin / B, kb1 = kmax / B, kbv = min(kmax, ts.thi) / B;
        single = kb0 == kb1;
        const int32_t rshift = run_shift<BN>(ts);
        if (!single && rshift < ushift && kmin <= ts.thi) {  // a visible unit over several blocks: per run
          const int32_t u_end = min((c + 1) << ushift, ts.rk.end_slot);
          single = true;
          for (int32_t u = c << ushift; u < u_end; u += 1 << rshift) {
            int32_t rmin, rmax;
            exact_slot_bounds(ts, u, min(u + (1 << rshift), u_end) - 1, rmin, rmax);
            single = single && rmin / B == rmax / B;
          }
        }
        if (kmin <= ts.thi && qb0 == qb1 && kb0 == kb1 && kb0 < ts.mp.n_kblocks) {
          // The common case (the CTA's queries in one query block, the unit in one key block): one
          // mask byte answers all three.
          visit = all0 = all1 = ts.blocks[static_cast<int64_t>(qb0) * ts.mp.n_kblocks + kb0] != 0;
        } else if (kmin <= ts.thi) {
          visit = block_pairs(ts.blocks, ts.mp.n_kblocks, qb0, qb1, kb0, kbv, false);
          all0 = visit && block_pairs(ts.blocks, ts.mp.n_kblocks, qb0, uw.mid0, kb0, kb1, true);
          all1 = visit && block_pairs(ts.blocks, ts.mp.n_kblocks, uw.mid1, qb1, kb0, kb1, true);
        }
      }
      uw.visit = __ballot_sync(0xffffffffu, visit);
      uw.all[0] = __ballot_sync(0xffffffffu, all0);
      uw.all[1] = __ballot_sync(0xffffffffu, all1);
      uw.single = __ballot_sync(0xffffffffu, single);
    }
    const unsigned ahead = uw.visit & (0xffffffffu << (k - uw.base));  // units k .. base + 31
    if (ahead != 0) return uw.base + __ffs(ahead) - 1;
    k = uw.base + 32;
  }
  return uw.end;
}

// The next gathered tile, for the producer thread of tile slot `slot` whose TMA block (issuers)
// starts at tile slot `block_slot`.
struct UnitTile {
  bool any;         // false: the walk is over
  int32_t mine;     // the row's slot that this thread's tile slot holds (−1: none, the slot stays empty)
  int32_t issue;    // the row's slot where the thread's TMA block starts (−1: none, zeros are copied)
  // Bit g: every block pair of consumer group g's queries and the tile's units is allowed; bit 2:
  // the keys of every run (run_shift) of the tile lie in one key block.
  int32_t flags;
};

template <int BN>
__device__ __forceinline__ UnitTile next_unit_tile(const TileScan& ts, UnitWalk& uw, int32_t slot,
                                                   int32_t block_slot) {
  UnitTile t{false, -1, -1, 7};
  const int32_t ushift = unit_shift<BN>(ts), n = BN >> ushift, mine = slot >> ushift, issue = block_slot >> ushift;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t c = next_unit<BN>(ts, uw, uw.cursor);
    if (c >= uw.end) break;
    uw.cursor = c + 1;
    t.any = true;
    if (i == mine) t.mine = (c << ushift) + (slot & ((1 << ushift) - 1));
    if (i == issue) t.issue = (c << ushift) + (block_slot & ((1 << ushift) - 1));
    const int32_t b = c - uw.base;  // next_unit leaves c inside the window
    const unsigned f = ((uw.all[0] >> b) & 1u) | (((uw.all[1] >> b) & 1u) << 1) | (((uw.single >> b) & 1u) << 2);
    t.flags &= static_cast<int32_t>(f);
  }
  return t;
}

// How a group of query rows (positions tlo .. thi, in order) meets one loaded key tile (slot
// positions tp[0 .. BN), kNoKey for empty slots): skip (no row sees any key), full (every row sees
// every slot: no masks needed), or neither (mask per element). Warp-uniform; every warp that passes
// the same rows gets the same answer.
struct TileUse {
  bool skip, full;
};

// From the tile's key bounds: kmin / kmax over its slots that hold keys (INT_MAX / INT_MIN when none
// does), all_valid: every slot holds a key. Any thread may call it. blocks_all (block masks): −1 reads
// the mask rows; 0 / 1 is what the caller already knows of "every block pair of these queries and
// the tile's key range is allowed" (then `skip` is left false: for callers that compute every tile).
__device__ __forceinline__ TileUse classify_bounds(const TileScan& ts, int32_t kmin, int32_t kmax, bool all_valid,
                                                   int32_t tlo, int32_t thi, int32_t blocks_all = -1) {
  if (kmax == INT_MIN || kmin > thi) return {true, false};  // no key, or every key after every row
  const attn::MaskParams& mp = ts.mp;
  bool none = false, all = kmax <= tlo && all_valid;
  if (mp.kind == static_cast<int32_t>(MaskKind::kBand)) {
    none = kmin >= mp.sink && static_cast<int64_t>(kmax) <= static_cast<int64_t>(tlo) - mp.local;
    all = all && (kmax < mp.sink || static_cast<int64_t>(thi) - kmin < mp.local);
  } else if (mp.kind == static_cast<int32_t>(MaskKind::kBlocks) && blocks_all >= 0) {
    all = all && blocks_all != 0;
  } else if (mp.kind == static_cast<int32_t>(MaskKind::kBlocks)) {
    const int32_t B = mp.block_tokens, qb0 = tlo / B - ts.first_qblock, qb1 = thi / B - ts.first_qblock;
    none = !block_pairs(ts.blocks, mp.n_kblocks, qb0, qb1, kmin / B, min(kmax, thi) / B, false);
    all = all && block_pairs(ts.blocks, mp.n_kblocks, qb0, qb1, kmin / B, kmax / B, true);
  }
  return {none, !none && all};
}

// From the slot positions themselves (one warp, cooperatively).
template <int BN>
__device__ __forceinline__ TileUse classify_tile(const TileScan& ts, const int32_t* tp, int32_t tlo, int32_t thi) {
  const int lane = threadIdx.x & 31;
  int32_t lo = INT_MAX, hi = INT_MIN;
  bool valid = true;
#pragma unroll
  for (int i = 0; i < BN / 32; ++i) {
    const int32_t x = tp[lane + 32 * i];
    const bool v = x != attn::kNoKey;
    lo = v ? min(lo, x) : lo;
    hi = v ? max(hi, x) : hi;
    valid = valid && v;
  }
  return classify_bounds(ts, __reduce_min_sync(0xffffffffu, lo), __reduce_max_sync(0xffffffffu, hi),
                         __all_sync(0xffffffffu, valid), tlo, thi);
}

// The CTA's row and tile walk state for work item w (rows m0 .. m0 + BM − 1 of it). Call from one
// thread; the result goes to shared memory.
template <int BN, int BM>
__device__ __forceinline__ TileScan make_tile_scan(const PrefillParams& p, const PrefillWorkItem& w, int D) {
  const PrefillRow row = p.rows[w.row];
  const int32_t G = p.group, total_m = row.n_tokens * G;
  const auto tok_of = [&](int32_t m) { return min(m, total_m - 1) / G; };
  // A piece of a key split sees entries [page_begin, page_end) of the row's list as a row of its own
  // (its slots count from page_begin's first, a multiple of every walk's tile and unit), and the new
  // keys only when it is the row's last piece.
  const int32_t row_first = p.indptr[w.row], row_entries = p.indptr[w.row + 1] - row_first;
  const int32_t first = row_first + min(w.page_begin, row_entries);
  const int32_t n_entries = row_first + min(w.page_end, row_entries) - first;
  const bool new_keys = row.new_kv != 0 && w.page_end == INT32_MAX;
  const int shift = p.pool.page_shift;
  const int64_t new_off = static_cast<int64_t>(row.q_row0) * p.new_stride + static_cast<int64_t>(row.kv_head) * D;
  const attn::RowKeys rk{p.page_ids + first,
                         p.page_pos0 + first,
                         p.page_len + first,
                         n_entries << shift,
                         (n_entries << shift) + (new_keys ? row.n_tokens : 0),
                         row.q_pos0,
                         new_keys ? p.k_new + new_off : nullptr,
                         new_keys ? p.v_new + new_off : nullptr,
                         p.new_stride};
  const attn::MaskParams mp{static_cast<int32_t>(row.mask), row.sink, row.local, max(row.block_tokens, 1),
                            row.n_kblocks};
  const uint8_t* blocks = row.mask == MaskKind::kBlocks ? p.block_allowed + row.block_offset : nullptr;
  return TileScan{rk,
                  shift,
                  (rk.end_slot + BN - 1) / BN,
                  row.q_pos0 + tok_of(w.m0),
                  row.q_pos0 + tok_of(w.m0 + BM - 1),
                  mp,
                  blocks,
                  row.first_qblock,
                  shift};
}

// Where packed row m (token m / group, head m % group of the row's group) of `row` starts in o.
template <int D>
__device__ __forceinline__ bf16* output_row(const PrefillParams& p, const PrefillRow& row, int32_t m) {
  const int32_t tok = m / p.group, hd = m - tok * p.group;
  return p.o + static_cast<int64_t>(row.q_row0 + tok) * p.o_stride +
         static_cast<int64_t>(row.kv_head * p.group + hd) * D;
}

// Both prefill kernels let a programmatic successor in at their start (launch.cuh): the key split's
// merge (prefill_attention.cu), whose CTAs then take the SMs a one-wave split leaves free and wait
// there rather than launch after the last piece. A successor starts only once every CTA of the
// prefill has started, so it never takes a slot a piece still needs.
__device__ __forceinline__ void let_the_merge_in() { pdl_launch_dependents(); }

// Normalises and stores the two output rows this thread holds in mma accumulator layout: packed
// rows mr and mr + 8 of work item w's row (o[j]: columns 8j + 2·(lane % 4) + {0, 1}; l: this
// thread's partial row sums, completed over the lane quad here; m_ref: the rows' log2-domain
// reference maxima, the exponents' base, finite once a row's sum is positive), as bf16
// to o, or for a piece of a key split as fp32 to its partial slot with the rows' log-sum-exp. Rows ≥
// total_m are skipped.
template <int D>
__device__ __forceinline__ void store_rows(const PrefillParams& p, const PrefillWorkItem& w, const PrefillRow& row,
                                           int32_t mr, int32_t total_m, const float (&m_ref)[2], const float (&l)[2],
                                           const float (&o)[D / 8][4]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = l[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int32_t m = mr + 8 * h;
    if (m >= total_m) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    if (w.partial >= 0) {
      const int64_t slot_row = static_cast<int64_t>(w.partial) * kPrefillTileRows + (m - w.m0);
      float* dst = p.partial_o + slot_row * D + 2 * (lane & 3);
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
      }
      if ((lane & 3) == 0) {
        p.partial_lse[slot_row] = sum > 0.0f ? m_ref[h] + log2f(sum) : -INFINITY;
      }
      continue;
    }
    bf16* dst = output_row<D>(p, row, m) + 2 * (lane & 3);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<uint32_t*>(dst + 8 * j) = attn::pack_bf16x2(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
    }
  }
}

// How the Hopper kernel walks block-mask rows' keys (its instance): not at all (no kBlocks row), by
// tiles (next_tile_bits) or by gathered units (next_unit_tile).
// kUnits only when some block holds fewer keys than a tile (sm90_small_blocks, attention_plan.h):
// otherwise its units are the tiles themselves, which kTiles finds faster (3-4% less time in the
// masked prefill at blocks of 128 in session 30's A/B).
enum class BlockWalk : int32_t { kNone = 0, kTiles = 1, kUnits = 2 };
using cuda::kSm90KeyTile;

// The Hopper kernel (prefill_attention_sm90.cu) reads K/V by TMA: tensor maps of the pool and of the
// new keys, made per launch.
struct Sm90Tensors {
  const bf16* k;
  const bf16* v;
  int64_t num_pages;
  int32_t page_tokens;
  const bf16* k_new;  // may be null
  const bf16* v_new;
  int64_t new_stride;  // elements
  int64_t new_rows;    // rows of k_new / v_new the plan reads
  // The kernel instance: kNone (no kBlocks row), kUnits (some kBlocks row has blocks under 128 keys),
  // else kTiles.
  BlockWalk walk;
  int32_t box_tokens;  // rows per TMA box (sm90_box_tokens): page_tokens, or a power of two under it
};
struct Sm90Maps {  // CUtensorMap is 64-byte aligned
  CUtensorMap k, v, k_new, v_new;
};
struct Sm90Sources {
  int32_t pool_rows;    // num_pages · page_tokens: a row coordinate past the pool (reads zeros)
  int32_t page_shift;   // log2(page_tokens)
  int32_t box_tokens;   // rows per TMA box: divides page_tokens
};
// Shared-memory opt-in once, then launches (InternalError naming loc when a tensor map fails).
void prepare_sm90(int32_t head_dim);
void launch_sm90(const PrefillParams& p, int32_t grid, int32_t head_dim, const Sm90Tensors& t, cudaStream_t stream,
                 const std::source_location& loc);

}  // namespace sparseserve::kernels::cuda::prefill
