// Paged prefill attention, Hopper path (sm_90a): the contract of prefill_attention.h, computed with
// warpgroup MMA (wgmma) on K/V tiles copied by TMA. PrefillAttention::run picks it on compute
// capability 9.0.
//
// How it works. A CTA takes the same 128 packed query rows as the mma.sync kernel
// (prefill_attention.cu) with three warpgroups:
//   - a producer walks the CTA's key tiles (128 slots; the same tile walk as the mma.sync kernel,
//     prefill_tiles.cuh, except that the kUnits instance gathers a tile from the block-mask row's
//     visible units, not consecutive slots) and, per tile, writes each slot's key position and
//     copies K and V by TMA
//     (per box of the tile one thread, in the block-mask instances one for K and one for V; a box
//     per page, or per part of one when a kUnits launch reads blocks under a page alone, and 64-column
//     block, 128-byte swizzled: the layout wgmma reads) into a 3-stage ring, K and V with their own
//     full / empty mbarriers. It plans the walk itself while tile 0's page-table reads are in
//     flight, reads the page table one tile ahead of the copies, and publishes each tile's key bounds
//     per warp;
//   - two consumers own 64 query rows each, Q in shared memory. Per tile i a consumer issues
//     S_i = Q·K_iᵀ (m64n128, both operands in shared memory) and O += P_{i−1}·V_{i−1} (P from
//     registers, V read transposed), waits for S_i only, masks it exactly (unless the tile's
//     bounds show every key visible to every row) and runs the lazy online softmax of
//     decode_attention.cuh while the P·V still runs, then waits for it, rescales O when the
//     reference maximum moved, and releases K_i and V_{i−1}.
// The consumers take turns issuing their MMAs (ping-pong), so one warpgroup's softmax overlaps the
// other's MMAs. The producer gives registers to the consumers (setmaxnreg). A tile some consumer's
// rows cannot see is still multiplied (its scores mask to zero probabilities), so the MMAs sit on
// one straight path.
#include <bit>
#include <cmath>
#include <mutex>
#include <string>

#include <cudaTypedefs.h>

#include "kernels/cuda/prefill_tiles.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace sparseserve::kernels::cuda {

namespace {

using attn::bf16;
using prefill::PrefillParams;
using prefill::TileScan;
using prefill::TileWalk;
using prefill::Sm90Sources;

constexpr int kConsumerThreads = 256;            // two consumer warpgroups
constexpr int kProducerThreads = 128;            // one producer warpgroup
constexpr int kThreads = kConsumerThreads + kProducerThreads;
constexpr int kBM = 128;       // packed query rows per CTA (64 per warpgroup)
static_assert(kBM == kPrefillTileRows, "plan_prefill_tiles cuts the tiles this kernel takes");
constexpr int kBN = 128;       // key slots per tile
static_assert(kProducerThreads == kBN, "a producer thread per key slot of a tile");
static_assert(kBN == prefill::kSm90KeyTile, "PrefillAttention picks the walk by this tile");
// Stages of K/V (K and V released separately): tiles i+1 and i+2 load during tile i. Three fill the
// 227 KB of shared memory at D = 128 (Q 32 KB + 3 × 64 KB + positions, bounds, barriers, alignment).
constexpr int kStages = 3;
// Registers per thread after the role split (setmaxnreg): the producer gives its share to the
// consumers (128·56 + 256·224 ≤ 65536).
[[maybe_unused]] constexpr int kProducerRegs = 56, kConsumerRegs = 224;

template <int D>
struct Sm90Smem {
  static constexpr int kQBytes = kBM * D * 2;  // warpgroup g's 64 rows at g · kQBytes / 2
  static constexpr int kTileBytes = kBN * D * 2;
  static constexpr int kStageOffset = kQBytes;  // stage s: K at + 2s·kTileBytes, V after it
  static constexpr int kPosOffset = kStageOffset + kStages * 2 * kTileBytes;  // [kStages][kBN] key positions
  static constexpr int kStageTileOffset = kPosOffset + kStages * kBN * 4;  // tile of each stage (−1: end)
  // [kStages][4] int4 {min, max, all valid, w} of the key positions in each producer warp's 32 slots;
  // w of warp 1 (block masks; the consumers read no other): bit g set when every (query block, key
  // block) pair of consumer warpgroup g's queries and the tile's keys is allowed, bit 2 (kUnits) when
  // each run (prefill::run_shift) of the tile's units lies in one key block (zero otherwise)
  static constexpr int kBoundsOffset = kStageTileOffset + 16;
  // mbarriers: full_k, full_v, empty_k, empty_v, each [kStages].
  static constexpr int kBarOffset = kBoundsOffset + kStages * 4 * 16;
  static constexpr int kBytes = kBarOffset + 32 * kStages + 1024;  // + slack to align the base to 1024
};

static_assert(Sm90Smem<128>::kBytes + 192 <= 227 * 1024,  // + the kernel's static shared variables (144 B)
              "Hopper's 227 KB of shared memory per CTA");

#ifdef SPARSESERVE_SM90A
// S = Q·Kᵀ for one warpgroup (64 × kBN, fp32), issued, not waited for.
template <int D>
__device__ __forceinline__ void issue_qk(float (&s)[kBN / 8][4], uint32_t q_wg, uint32_t kt) {
  float(&sf)[kBN / 2] = reinterpret_cast<float(&)[kBN / 2]>(s);
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const uint32_t qa = q_wg + (ks >> 2) * (64 * 128) + (ks & 3) * 32;
    const uint32_t kb = kt + (ks >> 2) * (kBN * 128) + (ks & 3) * 32;
    wgmma::mma_m64n128k16_ss(sf, wgmma::desc_kmajor(qa), wgmma::desc_kmajor(kb), ks > 0 ? 1 : 0);
  }
}

// O += P·V for one warpgroup, P (bf16, mma A layout) from registers, issued, not waited for.
template <int D>
__device__ __forceinline__ void issue_pv(float (&o)[D / 8][4], const uint32_t (&pa)[kBN / 16][4], uint32_t vt) {
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) {
    // Keys 16kk .. 16kk+15 are rows of V's blocks; the two 64-column blocks are kBN rows apart.
    const uint64_t desc = wgmma::desc_sw128(vt + kk * 16 * 128, kBN * 128);
    if constexpr (D == 128) {
      wgmma::mma_m64n128k16_rs(reinterpret_cast<float(&)[64]>(o), pa[kk], desc);
    } else {
      wgmma::mma_m64n64k16_rs(reinterpret_cast<float(&)[32]>(o), pa[kk], desc);
    }
  }
}

// Masks this thread's raw scores of a tile (rows t[0] = lane/4 of its warp's 16 and t[1] = lane/4 + 8;
// the key of slot u at tp[u], kNoKey when none): a key becomes −inf unless allowed(r, position, j)
// for row r, j its group of 8 slots (8j .. 8j + 7).
template <class Allowed>
__device__ __forceinline__ void mask_keys(float (&s)[kBN / 8][4], const int32_t* tp, const Allowed& allowed) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < kBN / 8; ++j) {
    const int2 kp = *reinterpret_cast<const int2*>(tp + 8 * j + 2 * (lane & 3));
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int32_t jp = h == 0 ? kp.x : kp.y;
      if (!allowed(0, jp, j)) s[j][h] = -INFINITY;
      if (!allowed(1, jp, j)) s[j][h + 2] = -INFINITY;
    }
  }
}

// The exact mask on raw scores (DESIGN.md §5): disallowed keys become −inf (full: every key is
// allowed, nothing to do).
__device__ __forceinline__ void mask_scores(float (&s)[kBN / 8][4], const TileScan& ts, const int32_t* tp, bool full,
                                            const int32_t (&t)[2]) {
  if (full) return;
  const attn::MaskParams& mp = ts.mp;
  const uint8_t* brow0 = nullptr;
  const uint8_t* brow1 = nullptr;
  if (ts.blocks != nullptr) {
    brow0 = ts.blocks + static_cast<int64_t>(t[0] / mp.block_tokens - ts.first_qblock) * mp.n_kblocks;
    brow1 = ts.blocks + static_cast<int64_t>(t[1] / mp.block_tokens - ts.first_qblock) * mp.n_kblocks;
  }
  mask_keys(s, tp, [&](int r, int32_t jp, int) { return attn::key_allowed(mp, r == 0 ? brow0 : brow1, t[r], jp); });
}

// Causality alone (the block mask of a tile whose every block pair the warpgroup's queries may see).
__device__ __forceinline__ void mask_causal(float (&s)[kBN / 8][4], const int32_t* tp, const int32_t (&t)[2]) {
  mask_keys(s, tp, [&](int r, int32_t jp, int) { return jp <= t[r]; });
}

// A block-mask row's tile whose block pairs are not all allowed (kmin .. kmax: its key range): each
// of this thread's two rows reads its allowed key blocks among the tile's once, as bits from the
// tile's first key block, then a key is masked by causality and a bit test (mask_scores divides and
// reads a mask byte per key). False (nothing done) when the block size is not a power of two or the
// tile spans more than 32 key blocks.
__device__ __forceinline__ bool mask_block_bits(float (&s)[kBN / 8][4], const TileScan& ts, const int32_t* tp,
                                                const int32_t (&t)[2], int32_t kmin, int32_t kmax) {
  const int32_t B = ts.mp.block_tokens;
  if ((B & (B - 1)) != 0 || kmin > kmax) return false;
  const int sh = __ffs(B) - 1;
  const int32_t kb0 = kmin >> sh, nb = min((kmax >> sh) - kb0 + 1, ts.mp.n_kblocks - kb0);
  if (nb > 32) return false;
  uint32_t bits[2] = {0u, 0u};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const uint8_t* brow = ts.blocks + static_cast<int64_t>((t[r] >> sh) - ts.first_qblock) * ts.mp.n_kblocks + kb0;
    for (int32_t i = 0; i < nb; ++i) bits[r] |= brow[i] != 0 ? 1u << i : 0u;
  }
  // kNoKey lies after every row: causality masks it before its block is looked at.
  mask_keys(s, tp, [&](int r, int32_t jp, int) {
    return jp <= t[r] && ((bits[r] >> ((jp >> sh) - kb0)) & 1u) != 0;
  });
  return true;
}

// A gathered tile (prefill::next_unit_tile) whose runs (prefill::run_shift: a unit or a part of one)
// each hold keys of one key block: each of this thread's two rows reads the allowed bit of every
// run's block once (from the run's first key; page entries hold at least one key from their first
// slot on, so an empty first slot means an empty run), then a key is masked by causality and its
// run's bit (mask_scores divides and reads a mask byte per key).
__device__ __forceinline__ void mask_run_bits(float (&s)[kBN / 8][4], const TileScan& ts, const int32_t* tp,
                                              const int32_t (&t)[2]) {
  const int32_t B = ts.mp.block_tokens, rshift = prefill::run_shift<kBN>(ts), n = kBN >> rshift;
  uint32_t bits[2] = {0u, 0u};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const uint8_t* brow = ts.blocks + static_cast<int64_t>(t[r] / B - ts.first_qblock) * ts.mp.n_kblocks;
    for (int32_t i = 0; i < n; ++i) {
      const int32_t j0 = tp[i << rshift], kb = j0 / B;
      bits[r] |= j0 != attn::kNoKey && kb < ts.mp.n_kblocks && brow[kb] != 0 ? 1u << i : 0u;
    }
  }
  // A group of 8 slots lies in one run (runs of 8 slots or more).
  mask_keys(s, tp, [&](int r, int32_t jp, int j) {
    return jp <= t[r] && ((bits[r] >> ((8 * j) >> rshift)) & 1u) != 0;
  });
}

// The online-softmax step of attn::online_softmax_step split around the P·V still in flight, on raw
// scores s (scale_log2 · s is the log2-domain score, applied inside the exponent by one FFMA): the
// reference maxima m (log2 domain) and sums l are updated and s becomes the probabilities now; the
// factor that O needs (alpha, when rescale) is applied by the caller once the previous P·V landed.
__device__ __forceinline__ bool softmax_probs(float (&s)[kBN / 8][4], float scale_log2, float (&m)[2], float (&l)[2],
                                              float (&alpha)[2]) {
  float mx[2] = {-INFINITY, -INFINITY};
  attn::quad_row_max(s, mx);
#pragma unroll
  for (int r = 0; r < 2; ++r) mx[r] = fmaxf(m[r], mx[r] * scale_log2);  // scale > 0 keeps the order; −inf stays −inf
  const bool keep = __all_sync(0xffffffffu, mx[0] <= m[0] + attn::kRescaleSlack && mx[1] <= m[1] + attn::kRescaleSlack);
  if (!keep) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      alpha[r] = attn::fast_exp2(m[r] - (mx[r] == -INFINITY ? 0.0f : mx[r]));  // 0 when m was −inf
      m[r] = mx[r];
      l[r] *= alpha[r];
    }
  }
  const float neg_base[2] = {m[0] == -INFINITY ? 0.0f : -m[0], m[1] == -INFINITY ? 0.0f : -m[1]};
#pragma unroll
  for (int j = 0; j < kBN / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j][e] = attn::fast_exp2(fmaf(s[j][e], scale_log2, neg_base[e >> 1]));
      l[e >> 1] += s[j][e];
    }
  }
  return !keep;
}

__device__ __forceinline__ void pack_probs(const float (&s)[kBN / 8][4], uint32_t (&pa)[kBN / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) {
    pa[kk][0] = attn::pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
    pa[kk][1] = attn::pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
    pa[kk][2] = attn::pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pa[kk][3] = attn::pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

// Position of key slot u (kNoKey when it holds no key).
__device__ __forceinline__ int32_t slot_position(const attn::RowKeys& rk, int shift, int32_t u) {
  if (u >= rk.end_slot) return attn::kNoKey;
  if (u < rk.page_slots) {
    const int32_t e = u >> shift, off = u & ((1 << shift) - 1);
    return off < __ldg(rk.page_len + e) ? __ldg(rk.page_pos0 + e) + off : attn::kNoKey;
  }
  return rk.new_pos0 + (u - rk.page_slots);
}

// The TMA source of one box of a tile (box_tokens slots, slot u its first): a pool page or part of
// one, the row's new keys, or (past the row's keys) rows outside the pool, read as zeros. Slots past
// a page's length hold the page's earlier content (finite: the pool is written only with K/V),
// masked by their position.
struct BlockSource {
  int32_t row, col0;
  bool is_new;  // from the new-keys map, else from the pool map
};

template <int D>
__device__ __forceinline__ BlockSource block_source(const attn::RowKeys& rk, const PrefillRow& row,
                                                    const Sm90Sources& src, int32_t u) {
  if (u < rk.page_slots) {
    const int32_t page_row0 = __ldg(rk.page_ids + (u >> src.page_shift)) << src.page_shift;
    return BlockSource{page_row0 + (u & ((1 << src.page_shift) - 1)), 0, false};
  }
  if (u < rk.end_slot) return BlockSource{row.q_row0 + (u - rk.page_slots), row.kv_head * D, true};
  return BlockSource{src.pool_rows, 0, false};
}

// The block's copy into a stage's K or V tile: one box per 64-column block, 128-byte swizzled.
template <int D>
__device__ __forceinline__ void tma_block(uint32_t tile, const CUtensorMap* pool_map, const CUtensorMap* new_map,
                                          const BlockSource& b, int32_t slot, uint32_t bar) {
  const CUtensorMap* map = b.is_new ? new_map : pool_map;
#pragma unroll
  for (int h = 0; h < D / 64; ++h) wgmma::tma_load_2d(tile + h * (kBN * 128) + slot * 128, map, b.col0 + 64 * h, b.row, bar);
}
#endif  // SPARSESERVE_SM90A

// kWalk (prefill::BlockWalk): how block-mask rows are walked; kNone is the dense and streaming
// instance, whose code the block-mask paths below do not touch. With kTiles the producer takes each
// tile's "every block pair allowed" answers from its walk's 32-tile window scan (next_tile_bits)
// instead of loading the mask rows per tile; with kUnits it walks the rows' keys by units and gathers
// the visible ones into tiles (next_unit_tile), passing on per tile the same answers and whether
// each run of its units lies in one key block. Consumers mask a tile whose block pairs are all
// allowed by causality alone, others by bits: per run (kUnits, when its runs pass) or per key block
// of the tile's key range (both, at most 32 blocks); only what is left, per key.
template <int D, prefill::BlockWalk kWalk>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_attention_sm90_kernel(const PrefillParams p, const __grid_constant__ prefill::Sm90Maps maps,
                                  const Sm90Sources src) {
#ifdef SPARSESERVE_SM90A
  using Smem = Sm90Smem<D>;
  constexpr int kChunks = D / 8;
  extern __shared__ uint8_t smem_raw[];
  prefill::let_the_merge_in();
  // The work item is read together with the count (the grid never exceeds the plan), so the two
  // loads overlap.
  const PrefillWorkItem w = p.work[blockIdx.x];
  if (static_cast<int32_t>(blockIdx.x) >= p.counts[0]) return;

  const uint32_t raw = attn::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;  // wgmma's swizzle atoms are 1024-byte aligned
  uint8_t* const base_ptr = smem_raw + (base - raw);
  int32_t* pos = reinterpret_cast<int32_t*>(base_ptr + Smem::kPosOffset);
  volatile int32_t* stage_tile = reinterpret_cast<int32_t*>(base_ptr + Smem::kStageTileOffset);
  int4* bounds = reinterpret_cast<int4*>(base_ptr + Smem::kBoundsOffset);
  const uint32_t full_k = base + Smem::kBarOffset, full_v = full_k + 8 * kStages;
  const uint32_t empty_k = full_v + 8 * kStages, empty_v = empty_k + 8 * kStages;
  const uint32_t q_tile = base;
  const auto k_stage = [&](int s) { return base + Smem::kStageOffset + s * 2 * Smem::kTileBytes; };
  const auto v_stage = [&](int s) { return k_stage(s) + Smem::kTileBytes; };

  const PrefillRow row = p.rows[w.row];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int32_t G = p.group, total_m = row.n_tokens * G, m0 = w.m0;
  // Position of packed row m's query (rows past the chunk: its last query's).
  const auto pos_of = [&](int32_t m) { return row.q_pos0 + min(m, total_m - 1) / G; };

  // Prologue. The mbarriers need no loads, so the one CTA barrier comes at once; after it the
  // producer's chain (tile scan, walk, first page-table reads, TMA copies) and the consumers' Q
  // copies run side by side (each starts from the work item).
  __shared__ TileScan s_ts;  // the producer's; the consumers read it after their first full_k wait
  __shared__ TileWalk s_walk;
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      wgmma::mbar_init(full_k + 8 * s, kProducerThreads);  // every producer thread (positions) + TMA bytes
      wgmma::mbar_init(full_v + 8 * s, 1);                 // the TMA issuer + TMA bytes
      wgmma::mbar_init(empty_k + 8 * s, kConsumerThreads);     // every consumer thread
      wgmma::mbar_init(empty_v + 8 * s, kConsumerThreads);
    }
    wgmma::mbar_init_fence();
  }
  __syncthreads();  // the barriers are ready
  const bool skip = p.skip_tiles != 0;
  const TileScan& ts = s_ts;

  if (tid >= kConsumerThreads) {
    // Producer warpgroup: tile i of the walk into stage i % kStages once the consumers have released
    // it; a stage with tile −1 ends the walk. What a tile's copies need (each thread's slot position;
    // for the first kBN / box lanes of the K and V issuing warps, their box's source) is read one
    // tile ahead, so the page-table loads overlap the wait instead of delaying the copies.
    // The K copies come from the first warp. The V copies come from the same warp in the dense and
    // streaming instance; in the block-mask instances from another, so that the next tile's K copy
    // waits for neither this tile's V slot nor its V copy, only for the walk (kUnits 4% faster,
    // kTiles up to 1%; the dense instance 0.8% slower that way: bench/RESULTS.md §3 session 32).
    constexpr int kVWarp = kWalk == prefill::BlockWalk::kNone ? 0 : 2;
    wgmma::set_max_regs_dec<kProducerRegs>();
    const int ptid = tid - kConsumerThreads;
    // The tile scan. Thread 0 writes it before its first arrival on full_k (release), the consumers
    // read it after their first wait there (acquire).
    if (ptid == 0) {
      s_ts = prefill::make_tile_scan<kBN, kBM>(p, w, D);
      s_ts.unit_floor = __ffs(src.box_tokens) - 1;  // units of whole TMA boxes
    }
    wgmma::named_sync<kProducerThreads>(1);  // the tile scan is visible to the producer
    const int pwarp = ptid >> 5, block_slot = (ptid & 31) * src.box_tokens;
    const bool issuer = (pwarp == 0 || pwarp == kVWarp) && block_slot < kBN;
    const auto read_ahead = [&](int32_t tile, int32_t& position, BlockSource& block) {
      position = tile < ts.n_tiles ? slot_position(ts.rk, ts.shift, tile * kBN + ptid) : attn::kNoKey;
      if (issuer && tile < ts.n_tiles) block = block_source<D>(ts.rk, row, src, tile * kBN + block_slot);
    };
    // Tile 0's sources are read while the producer's first warp plans the walk (the first tile is
    // tile 0 unless a block mask hides it or no key is visible; then they are read again).
    int32_t position = attn::kNoKey;
    BlockSource block{0, 0, false};
    read_ahead(0, position, block);
    if (ptid < 32) {
      const TileWalk wk = prefill::plan_walk<kBN>(ts, skip);
      if (ptid == 0) s_walk = wk;
    }
    wgmma::named_sync<kProducerThreads>(1);  // the walk is visible to the producer
    prefill::BlockWindow win;
    // Position of consumer warpgroup g's packed row r (0 .. 63).
    const auto group_pos = [&](int g, int r) { return pos_of(m0 + 64 * g + r); };
    // kTiles: kBlocks rows walked with skip_tiles take blocks_all from the window scan.
    const bool window_bits = kWalk == prefill::BlockWalk::kTiles && skip && ts.blocks != nullptr;
    prefill::BlockWindowBits wbits;
    if (window_bits) {
      const int32_t B = ts.mp.block_tokens;
      for (int g = 0; g < 2; ++g) {
        wbits.qb0[g] = group_pos(g, 0) / B - ts.first_qblock;
        wbits.qb1[g] = group_pos(g, 63) / B - ts.first_qblock;
      }
    }
    const auto walk = [&](int32_t k) {
      if constexpr (kWalk == prefill::BlockWalk::kTiles) {
        if (window_bits) return prefill::next_tile_bits<kBN>(ts, s_walk, k, wbits);
      }
      return prefill::next_tile<kBN>(ts, s_walk, k, skip, win);
    };
    // kUnits: kBlocks rows walked with skip_tiles gather their units; cur is then 0 while a tile is
    // found (n_tiles: the walk is over) and unit_flags holds the tile's UnitTile::flags. The first
    // gathered tile keeps what read_ahead(0) read for the slots it shares with tile 0.
    int32_t cur = 0;
    [[maybe_unused]] const bool gather = kWalk == prefill::BlockWalk::kUnits && skip && ts.blocks != nullptr;
    [[maybe_unused]] prefill::UnitWalk uw;
    [[maybe_unused]] int32_t unit_flags = 0;
    [[maybe_unused]] const auto next_gathered = [&](bool first) {
      const prefill::UnitTile ut = prefill::next_unit_tile<kBN>(ts, uw, ptid, block_slot);
      cur = ut.any ? 0 : ts.n_tiles;
      unit_flags = ut.flags;
      if (!first || ut.mine != ptid) {
        position = ut.mine >= 0 ? slot_position(ts.rk, ts.shift, ut.mine) : attn::kNoKey;
      }
      if (issuer && (!first || ut.issue != block_slot)) {
        block = ut.issue >= 0 ? block_source<D>(ts.rk, row, src, ut.issue) : BlockSource{src.pool_rows, 0, false};
      }
    };
    if constexpr (kWalk == prefill::BlockWalk::kUnits) {
      if (gather) {
        uw = prefill::plan_unit_walk<kBN>(ts, s_walk, group_pos(0, 63), group_pos(1, 0));
        next_gathered(true);
      }
    }
    if (!gather) {
      cur = walk(0);
      if (cur != 0) read_ahead(cur, position, block);
    }
    for (int i = 0;; ++i) {
      const int st = i % kStages;
      const uint32_t phase = ((i / kStages) - 1) & 1;  // of the release being waited for
      if (i >= kStages) wgmma::mbar_wait(empty_k + 8 * st, phase);
      if (cur >= ts.n_tiles) {
        if (ptid == 0) stage_tile[st] = -1;
        wgmma::mbar_arrive(full_k + 8 * st);
        break;
      }
      pos[st * kBN + ptid] = position;
      {  // this warp's slot bounds, so the consumers classify the tile without scanning it
        const bool v = position != attn::kNoKey;
        const int32_t lo = __reduce_min_sync(0xffffffffu, v ? position : INT_MAX);
        const int32_t hi = __reduce_max_sync(0xffffffffu, v ? position : INT_MIN);
        const bool all = __all_sync(0xffffffffu, v);
        int32_t blocks_all = 0;
        if (gather) {
          blocks_all = unit_flags;
        } else if (window_bits) {
          blocks_all = wbits.all_bits(cur);
        } else if (ptid == 32 && ts.blocks != nullptr) {
          // Block masks: the mask rows are read here, kStages tiles ahead of the consumers, not on
          // their path. The tile's key range from the page positions holds every key in it.
          int32_t kmin, kmax;
          prefill::tile_bounds<kBN>(ts, cur, kmin, kmax);
          const int32_t B = ts.mp.block_tokens;
          for (int g = 0; g < 2; ++g) {
            const int32_t tlo = group_pos(g, 0), thi = group_pos(g, 63);
            const bool ok = prefill::block_pairs(ts.blocks, ts.mp.n_kblocks, tlo / B - ts.first_qblock,
                                                 thi / B - ts.first_qblock, kmin / B, kmax / B, true);
            blocks_all |= ok ? 1 << g : 0;
          }
        }
        if ((ptid & 31) == 0) bounds[st * 4 + (ptid >> 5)] = make_int4(lo, hi, all ? 1 : 0, blocks_all);
      }
      if (ptid == 0) {
        stage_tile[st] = cur;
        wgmma::mbar_arrive_expect_tx(full_k + 8 * st, Smem::kTileBytes);
      }
      if (ptid < 32) {
        __syncwarp();  // the byte count is expected before any block's copy lands
        if (issuer) tma_block<D>(k_stage(st), &maps.k, &maps.k_new, block, block_slot, full_k + 8 * st);
      }
      if (ptid != 0) wgmma::mbar_arrive(full_k + 8 * st);
      // Where the next tile is found and its sources read: in the dense and streaming instance
      // before the wait for this stage's V slot, which the consumers free a tile later than its K
      // slot, so the walk's latency hides behind that wait; in the block-mask instances (every row
      // of their launches), whose walk is longer, after this tile's V copy on the V warp, so the V
      // copy is not held back by the walk (kUnits about 1.5% faster at B = 64 when one warp issued
      // both: bench/RESULTS.md §3 session 31); the K warp has no V copy to wait for.
      const BlockSource v_block = block;
      const auto advance = [&] {
        if (gather) {
          if constexpr (kWalk == prefill::BlockWalk::kUnits) next_gathered(false);
        } else {
          cur = walk(cur + 1);
          read_ahead(cur, position, block);
        }
      };
      if constexpr (kWalk == prefill::BlockWalk::kNone) advance();
      if (pwarp == kVWarp) {
        if (issuer && i >= kStages) wgmma::mbar_wait(empty_v + 8 * st, phase);
        if (block_slot == 0) wgmma::mbar_arrive_expect_tx(full_v + 8 * st, Smem::kTileBytes);
        __syncwarp();
        if (issuer) tma_block<D>(v_stage(st), &maps.v, &maps.v_new, v_block, block_slot, full_v + 8 * st);
      }
      if constexpr (kWalk != prefill::BlockWalk::kNone) advance();
    }
    return;
  }

  // Q: packed rows m0 .. m0+127 (rows past the chunk zero), row r in warpgroup r / 64's tile, copied
  // by that warpgroup, which waits for it alone: the producer starts on K/V meanwhile.
  for (int j = tid & 127; j < 64 * kChunks; j += 128) {
    const int r = 64 * (tid >> 7) + j / kChunks, c = j % kChunks;
    const int32_t m = m0 + r;
    const bool valid = m < total_m;
    const int32_t tok = m / G, h = m - tok * G;
    const bf16* src = p.q + static_cast<int64_t>(row.q_row0 + tok) * p.q_stride +
                      static_cast<int64_t>(row.kv_head * G + h) * D + c * 8;
    const uint32_t off = (r >> 6) * (Smem::kQBytes / 2) + attn::wgmma_tile_offset<D, 64>(r & 63, c);
    attn::cp_async16(q_tile + off, valid ? src : p.q, valid);
  }
  attn::cp_async_commit();

  // Consumers: warpgroup wg owns packed rows m0 + 64wg .. + 63; this thread rows r0 and r0 + 8.
  // Software pipeline per tile i: issue S_i = Q·K_iᵀ and O += P_{i-1}·V_{i-1}, wait for S_i only,
  // softmax of S_i while P·V runs, then wait for P·V, rescale O if needed, release stage i − 1.
  wgmma::set_max_regs_inc<kConsumerRegs>();
  const int wg = tid >> 7;
  attn::cp_async_wait<0>();
  wgmma::fence_proxy_async();  // this thread's Q copies, visible to wgmma
  wgmma::named_sync<128>(4 + wg);  // the warpgroup's Q rows are in place
  const int32_t gm0 = m0 + 64 * wg;
  const bool wg_active = gm0 < total_m;
  const int32_t g_tlo = pos_of(gm0), g_thi = pos_of(gm0 + 63);
  const int32_t r0 = gm0 + 16 * (warp & 3) + (lane >> 2);
  const int32_t t[2] = {pos_of(r0), pos_of(r0 + 8)};
  const uint32_t q_wg = q_tile + wg * (Smem::kQBytes / 2);

  float o[D / 8][4];
#pragma unroll
  for (int d = 0; d < D / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float(&of)[D / 2] = reinterpret_cast<float(&)[D / 2]>(o);

  // Ping-pong: the two warpgroups take turns issuing their MMAs (named barriers 2 and 3), so one's
  // softmax runs while the other's MMAs use the tensor cores. Both take one turn per delivered
  // tile plus one for the last P·V; warpgroup 1 lends warpgroup 0 the first turn, and warpgroup 0
  // takes back the last arrival at the end.
  const int my_turn = 2 + wg, next_turn = 3 - wg;
  const auto turn_begin = [&] { wgmma::named_sync<kConsumerThreads>(my_turn); };
  const auto turn_end = [&] { wgmma::named_arrive<kConsumerThreads>(next_turn); };
  if (wg == 1) turn_end();

  if (!wg_active) {  // no rows (the chunk's last tile): take the turns, release every stage
    int i = 0;
    for (;; ++i) {
      const int st = i % kStages;
      wgmma::mbar_wait(full_k + 8 * st, (i / kStages) & 1);
      if (stage_tile[st] < 0) break;
      turn_begin();
      turn_end();
      wgmma::mbar_arrive(empty_k + 8 * st);
      wgmma::mbar_wait(full_v + 8 * st, (i / kStages) & 1);
      wgmma::mbar_arrive(empty_v + 8 * st);
    }
    if (i > 0) {
      turn_begin();
      turn_end();
    }
  } else {
    // Every delivered tile is computed (a tile no row of this warpgroup sees masks to zero
    // probabilities), so the MMAs sit on one straight path.
    float s[kBN / 8][4];
    float(&sf)[kBN / 2] = reinterpret_cast<float(&)[kBN / 2]>(s);
    uint32_t pa[kBN / 16][4];  // P of the tile in stage `pending`, whose P·V is next
    const auto scores = [&](int st) {
      bool full = false;
      if (skip) {
        const int4* bd = bounds + st * 4;
        const int4 b0 = bd[0], b1 = bd[1], b2 = bd[2], b3 = bd[3];
        // Block masks: the producer's answer for this warpgroup's block pairs (bit wg of b1.w).
        const int32_t kmin = min(min(b0.x, b1.x), min(b2.x, b3.x)), kmax = max(max(b0.y, b1.y), max(b2.y, b3.y));
        full = prefill::classify_bounds(ts, kmin, kmax, (b0.z & b1.z & b2.z & b3.z) != 0, g_tlo, g_thi, (b1.w >> wg) & 1)
                   .full;
        if constexpr (kWalk != prefill::BlockWalk::kNone) {
          if (!full && ts.blocks != nullptr) {
            if (((b1.w >> wg) & 1) != 0) {
              mask_causal(s, pos + st * kBN, t);
              return;
            }
            if constexpr (kWalk == prefill::BlockWalk::kUnits) {
              if (((b1.w >> 2) & 1) != 0) {
                mask_run_bits(s, ts, pos + st * kBN, t);
                return;
              }
            }
            // kUnits: a tile with a run over two blocks (new keys after a partial page, shifted
            // pages, block sizes not a multiple of 8): its key range may span few blocks.
            if (mask_block_bits(s, ts, pos + st * kBN, t, kmin, kmax)) return;
          }
        }
      }
      mask_scores(s, ts, pos + st * kBN, full, t);
    };
    int pending = 0;
    wgmma::mbar_wait(full_k, 0);
    if (stage_tile[0] >= 0) {
      wgmma::fence_proxy_async();  // the TMA data → the async proxy wgmma reads with
      turn_begin();
      wgmma::fence();
      issue_qk<D>(s, q_wg, k_stage(0));
      wgmma::commit();
      turn_end();
      wgmma::wait<0>();
      wgmma::fence_operands(sf);
      scores(0);
      wgmma::mbar_arrive(empty_k);
      float alpha[2];
      softmax_probs(s, p.scale_log2, m, l, alpha);  // O is still zero: nothing to rescale
      pack_probs(s, pa);
      int i = 1;
      for (;; ++i) {
        const int st = i % kStages;
        wgmma::mbar_wait(full_k + 8 * st, (i / kStages) & 1);
        if (stage_tile[st] < 0) break;
        wgmma::mbar_wait(full_v + 8 * pending, ((i - 1) / kStages) & 1);
        wgmma::fence_proxy_async();
        wgmma::fence_operands(of);
        turn_begin();
        wgmma::fence();
        issue_qk<D>(s, q_wg, k_stage(st));
        wgmma::commit();
        issue_pv<D>(o, pa, v_stage(pending));
        wgmma::commit();
        turn_end();
        wgmma::wait<1>();  // S_i has landed; P·V of the previous tile may still run
        wgmma::fence_operands(sf);
        scores(st);
        wgmma::mbar_arrive(empty_k + 8 * st);
        const bool rescale_o = softmax_probs(s, p.scale_log2, m, l, alpha);
        wgmma::wait<0>();
        wgmma::fence_operands(of);
        wgmma::mbar_arrive(empty_v + 8 * pending);
        if (rescale_o) attn::rescale_rows(o, alpha);
        pack_probs(s, pa);
        pending = st;
      }
      wgmma::mbar_wait(full_v + 8 * pending, ((i - 1) / kStages) & 1);
      wgmma::fence_proxy_async();
      wgmma::fence_operands(of);
      turn_begin();
      wgmma::fence();
      issue_pv<D>(o, pa, v_stage(pending));
      wgmma::commit();
      turn_end();
      wgmma::wait<0>();
      wgmma::fence_operands(of);
      wgmma::mbar_arrive(empty_v + 8 * pending);
    }
  }

  if (wg == 0) turn_begin();  // warpgroup 1's last arrival

  prefill::store_rows<D>(p, w, row, r0, total_m, m, l, o);
#endif  // SPARSESERVE_SM90A
}

}  // namespace

namespace prefill {

// The kernel instance for a head dimension and walk.
template <int D>
auto sm90_kernel(BlockWalk walk) {
  switch (walk) {
    case BlockWalk::kTiles: return prefill_attention_sm90_kernel<D, BlockWalk::kTiles>;
    case BlockWalk::kUnits: return prefill_attention_sm90_kernel<D, BlockWalk::kUnits>;
    default: return prefill_attention_sm90_kernel<D, BlockWalk::kNone>;
  }
}

void prepare_sm90(int32_t head_dim) {
  for (const BlockWalk walk : {BlockWalk::kNone, BlockWalk::kTiles, BlockWalk::kUnits}) {
    if (head_dim == 64) {
      CUDA_CHECK(cudaFuncSetAttribute(sm90_kernel<64>(walk), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      Sm90Smem<64>::kBytes));
    } else {
      CUDA_CHECK(cudaFuncSetAttribute(sm90_kernel<128>(walk), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      Sm90Smem<128>::kBytes));
    }
  }
}

namespace {

// cuTensorMapEncodeTiled from the driver, found once through the runtime (no libcuda link).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status;
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &status));
    check(status == cudaDriverEntryPointSuccess && ptr != nullptr, "PrefillAttention: cuTensorMapEncodeTiled not found");
    fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  });
  return fn;
}

// A [rows][cols] bf16 matrix (row stride in elements) read in boxes of box_rows × 64 columns,
// 128-byte swizzled (the wgmma layout), zeros outside.
CUtensorMap tensor_map(const void* base, uint64_t cols, uint64_t rows, uint64_t stride, uint32_t box_rows,
                       const std::source_location& loc) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {cols, rows};
  const cuuint64_t strides[1] = {stride * 2};
  const cuuint32_t box[2] = {64, box_rows};
  const cuuint32_t elem[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides,
                                          box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    throw InternalError("PrefillAttention: cuTensorMapEncodeTiled failed (" + std::to_string(static_cast<int>(r)) + ")",
                        loc);
  }
  return map;
}

}  // namespace

void launch_sm90(const PrefillParams& p, int32_t grid, int32_t head_dim, const Sm90Tensors& t, cudaStream_t stream,
                 const std::source_location& loc) {
  check(t.box_tokens >= 16 && t.page_tokens % t.box_tokens == 0 && (t.box_tokens & (t.box_tokens - 1)) == 0,
        "PrefillAttention: TMA box rows must be a power of two ≥ 16 dividing page_tokens", loc);
  Sm90Maps maps;
  const uint64_t pool_rows = static_cast<uint64_t>(t.num_pages) * t.page_tokens;
  maps.k = tensor_map(t.k, head_dim, pool_rows, head_dim, t.box_tokens, loc);
  maps.v = tensor_map(t.v, head_dim, pool_rows, head_dim, t.box_tokens, loc);
  maps.k_new = maps.k;  // unused unless some row reads new keys
  maps.v_new = maps.v;
  if (t.k_new != nullptr && t.new_rows > 0) {
    maps.k_new = tensor_map(t.k_new, t.new_stride, t.new_rows, t.new_stride, t.box_tokens, loc);
    maps.v_new = tensor_map(t.v_new, t.new_stride, t.new_rows, t.new_stride, t.box_tokens, loc);
  }
  const Sm90Sources src{static_cast<int32_t>(pool_rows), std::countr_zero(static_cast<uint32_t>(t.page_tokens)),
                        t.box_tokens};
  const auto launch = [&](auto kernel, int smem) { kernel<<<grid, kThreads, smem, stream>>>(p, maps, src); };
  if (head_dim == 64) {
    launch(sm90_kernel<64>(t.walk), Sm90Smem<64>::kBytes);
  } else {
    launch(sm90_kernel<128>(t.walk), Sm90Smem<128>::kBytes);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace prefill

}  // namespace sparseserve::kernels::cuda
