// Paged prefill attention (see prefill_attention.h for the contract).
//
// How it works (FlashAttention-2 on mma.sync m16n8k16, bf16 in, fp32 accumulators). A CTA of 4
// warps takes 128 packed query rows of one (sequence, KV head) row (packed row m = token m / group,
// head m % group, so the group's heads share every K/V tile); warp w owns rows 32w .. 32w+31 as two
// m16 tiles, so each K/V fragment read from shared memory feeds two mma (shared-memory bandwidth,
// not the tensor cores, bounds a 16-row warp). Q stays in shared memory (fragments reloaded per
// k-step: registers hold O, S and the softmax state). Key tiles of 64 slots are double-buffered
// with cp.async, each slot's key position beside them. The CTA visits only key tiles some of its
// queries may see: before the causal end, and for the band the sink tiles and the window (both
// found once per CTA by a warp-parallel search over the monotone page positions); block masks test
// each tile against the mask rows. Per warp a loaded tile is skipped when none of its rows sees any
// key, computed without masks when all see all keys, and masked per element otherwise (exact Λ
// and block edges). Online softmax in the log2 domain with lazy rescaling (decode_attention.cuh);
// rows that see no key get zeros (the CPU twin's rule). Registers: O (128 at D = 128) and S (64)
// fill the 255 of a 2-CTA/SM kernel, so the CTA-invariant state (key source, mask, tile walk)
// is kept in shared memory.
#include "kernels/cuda/prefill_attention.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <utility>

#include "kernels/cuda/prefill_tiles.cuh"

namespace sparseserve::kernels::cuda {

namespace {

using attn::bf16;
using prefill::PrefillParams;
using prefill::TileScan;
using prefill::TileWalk;

constexpr int kThreads = 128;
constexpr int kMT = 2;                  // m16 tiles per warp (each K/V fragment feeds kMT mma)
constexpr int kBM = kThreads / 32 * kMT * 16;  // packed query rows per CTA: 128
static_assert(kBM == kPrefillTileRows, "plan_prefill_tiles cuts the tiles this kernel takes");
constexpr int kBN = 64;  // key slots per tile
constexpr int kStages = 2;
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kRowInts = static_cast<int>(sizeof(PrefillRow) / 4);
constexpr int kWorkInts = static_cast<int>(sizeof(PrefillWorkItem) / 4);
constexpr int kMergeInts = static_cast<int>(sizeof(PrefillMergeItem) / 4);
static_assert(kWorkInts % 2 == 0 && kMergeInts % 2 == 0, "the plan blob's PrefillRows stay 8-byte aligned");

template <int D>
struct PrefillSmem {
  static constexpr int kTileBytes = kBN * D * 2;
  static constexpr int kQOffset = kStages * 2 * kTileBytes;  // K and V per stage
  static constexpr int kPosOffset = kQOffset + kBM * D * 2;
  static constexpr int kBytes = kPosOffset + kStages * kBN * 4;
};

// A warp's rows: kMT m-tiles of 16; this thread holds rows lane/4 and lane/4 + 8 of each.
struct WarpRows {
  int32_t first;               // first packed row of the warp in the CTA tile
  int32_t tlo, thi;            // positions of the warp's first and last query
  int32_t t[kMT][2];           // this thread's query positions
};

// One warp's share of one key tile: S = Q·Kᵀ (kMT·16 × 64), mask, online softmax, O += P·V.
template <int D>
__device__ __forceinline__ void attend_tile(const PrefillParams& p, const TileScan& ts, uint32_t q_tile, uint32_t kt,
                                            uint32_t vt, const int32_t* tp, const WarpRows& wr, float (&m)[kMT][2],
                                            float (&l)[kMT][2], float (&o)[kMT][D / 8][4]) {
  const int lane = threadIdx.x & 31;
  const attn::MaskParams& mp = ts.mp;
  const uint8_t* blocks = ts.blocks;
  const int32_t first_qblock = ts.first_qblock;
  bool full = false;
  if (p.skip_tiles) {
    const prefill::TileUse use = prefill::classify_tile<kBN>(ts, tp, wr.tlo, wr.thi);
    if (use.skip) return;
    full = use.full;
  }

  // (Computing the tile in two 32-key halves removes ptxas's few spills at D = 128 but measured 4-9%
  // slower on the H200: the whole tile stays.)
  float s[kMT][kBN / 8][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
  }
  attn::warp_qk<D, kMT, kBN>(s, q_tile, wr.first, kt);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    if (full) {
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][j][e] *= p.scale_log2;
      }
    } else {
      // Block mask rows of this thread's two queries (kBlocks only).
      const uint8_t* brow0 = nullptr;
      const uint8_t* brow1 = nullptr;
      if (blocks != nullptr) {
        brow0 = blocks + static_cast<int64_t>(wr.t[mt][0] / mp.block_tokens - first_qblock) * mp.n_kblocks;
        brow1 = blocks + static_cast<int64_t>(wr.t[mt][1] / mp.block_tokens - first_qblock) * mp.n_kblocks;
      }
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const int2 kp = *reinterpret_cast<const int2*>(tp + 8 * j + 2 * (lane & 3));
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int32_t jp = h == 0 ? kp.x : kp.y;
          s[mt][j][h] = attn::key_allowed(mp, brow0, wr.t[mt][0], jp) ? s[mt][j][h] * p.scale_log2 : -INFINITY;
          s[mt][j][h + 2] =
              attn::key_allowed(mp, brow1, wr.t[mt][1], jp) ? s[mt][j][h + 2] * p.scale_log2 : -INFINITY;
        }
      }
    }
    attn::online_softmax_step<kBN / 8, D / 8>(s[mt], m[mt], l[mt], o[mt]);
  }
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      a[mt][0] = attn::pack_bf16x2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
      a[mt][1] = attn::pack_bf16x2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
      a[mt][2] = attn::pack_bf16x2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
      a[mt][3] = attn::pack_bf16x2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      attn::ldmatrix_x4_trans(b, vt + attn::tile_offset<D>(16 * kk + (lane & 7) + (((lane >> 3) & 1) << 3),
                                                           2 * dp + (lane >> 4)));
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        attn::mma_bf16_16816(o[mt][2 * dp], a[mt], b[0], b[1]);
        attn::mma_bf16_16816(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads, 2) prefill_attention_paged_kernel(const PrefillParams p) {
  static_assert(kStages == 2, "the pipeline below keeps one tile in flight");
  using Smem = PrefillSmem<D>;
  constexpr int kChunks = D / 8;
  extern __shared__ __align__(128) uint8_t smem[];
  prefill::let_the_merge_in();
  if (static_cast<int32_t>(blockIdx.x) >= p.counts[0]) return;

  const PrefillWorkItem w = p.work[blockIdx.x];
  const PrefillRow row = p.rows[w.row];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int32_t G = p.group, total_m = row.n_tokens * G, m0 = w.m0;
  const auto tok_of = [&](int32_t m) { return min(m, total_m - 1) / G; };

  // Query positions: the warp's range, this thread's rows.
  WarpRows wr;
  wr.first = kMT * 16 * warp;
  const int32_t wm0 = m0 + wr.first;
  const bool warp_active = wm0 < total_m;
  wr.tlo = row.q_pos0 + tok_of(wm0);
  wr.thi = row.q_pos0 + tok_of(wm0 + kMT * 16 - 1);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      wr.t[mt][h] = row.q_pos0 + tok_of(wm0 + 16 * mt + 8 * h + (lane >> 2));
    }
  }

  // CTA-invariant state lives in shared memory and is read where it is needed, so that registers
  // stay with O, S and the softmax state.
  __shared__ TileScan s_ts;
  __shared__ TileWalk s_walk;
  if (tid == 0) s_ts = prefill::make_tile_scan<kBN, kBM>(p, w, D);
  __syncthreads();
  const bool skip = p.skip_tiles != 0;
  if (warp == 0) {
    const TileWalk wk = prefill::plan_walk<kBN>(s_ts, skip);
    if (lane == 0) s_walk = wk;
  }
  __syncthreads();
  const TileScan& ts = s_ts;

  const uint32_t pipe = attn::smem_addr(smem);
  const uint32_t q_tile = attn::smem_addr(smem + Smem::kQOffset);
  int32_t* pos = reinterpret_cast<int32_t*>(smem + Smem::kPosOffset);
  const auto k_stage = [&](int s) { return pipe + s * 2 * Smem::kTileBytes; };
  const auto v_stage = [&](int s) { return pipe + s * 2 * Smem::kTileBytes + Smem::kTileBytes; };

  // Q tile: packed rows m0 .. m0+kBM-1 (rows past the chunk zero); it stays in shared memory.
  for (int i = tid; i < kBM * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const int32_t m = m0 + r;
    const bool valid = m < total_m;
    const int32_t tok = m / G, h = m - tok * G;
    const bf16* src = p.q + static_cast<int64_t>(row.q_row0 + tok) * p.q_stride +
                      static_cast<int64_t>(row.kv_head * G + h) * D + c * 8;
    attn::cp_async16(q_tile + attn::tile_offset<D>(r, c), valid ? src : p.q, valid);
  }
  attn::cp_async_commit();

  prefill::BlockWindow win;
  int32_t cur = prefill::next_tile<kBN>(ts, s_walk, 0, skip, win);
  if (cur < ts.n_tiles) attn::load_kv_tile<D, kBN, kThreads>(k_stage(0), v_stage(0), pos, ts.rk, p.pool, cur * kBN);
  attn::cp_async_commit();
  int32_t nxt = cur < ts.n_tiles ? prefill::next_tile<kBN>(ts, s_walk, cur + 1, skip, win) : ts.n_tiles;

  float o[kMT][D / 8][4];
  float m[kMT][2], l[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int d = 0; d < D / 8; ++d) o[mt][d][0] = o[mt][d][1] = o[mt][d][2] = o[mt][d][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }

  for (int it = 0; cur < ts.n_tiles; ++it) {
    attn::cp_async_wait<0>();
    __syncthreads();  // tile `cur` (and Q) visible; the other stage is free
    const int st = it & 1;
    if (nxt < ts.n_tiles) {
      attn::load_kv_tile<D, kBN, kThreads>(k_stage(st ^ 1), v_stage(st ^ 1), pos + (st ^ 1) * kBN, ts.rk, p.pool,
                                           nxt * kBN);
    }
    attn::cp_async_commit();
    if (warp_active) {
      attend_tile<D>(p, ts, q_tile, k_stage(st), v_stage(st), pos + st * kBN, wr, m, l, o);
    }
    cur = nxt;
    nxt = nxt < ts.n_tiles ? prefill::next_tile<kBN>(ts, s_walk, nxt + 1, skip, win) : ts.n_tiles;
  }
  attn::cp_async_wait<0>();

  // Normalise and store (bf16x2 per thread and row).
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    prefill::store_rows<D>(p, w, row, wm0 + 16 * mt + (lane >> 2), total_m, m[mt], l[mt], o[mt]);
  }
}

template <int D>
void* prefill_kernel() {
  return reinterpret_cast<void*>(&prefill_attention_paged_kernel<D>);
}

// The key split's merge: a warp per packed row of a split tile (kMergeRows rows per CTA, grid
// {merge items, kPrefillTileRows / kMergeRows}) folds the pieces' normalised fp32 rows by their
// log-sum-exp, in piece order, into the bf16 output; a row no piece saw a key of gets zeros.
// Lane i loads piece i's lse (32 pieces a round) and the warp shares the weights by shuffles, so the
// pieces' rows are independent loads (kMergeDepth in flight). Launched programmatically after the
// prefill kernel (let_the_merge_in): its CTAs wait for the pieces on the SMs they leave free.
constexpr int kMergeRows = 8;
constexpr int kMergeDepth = 8;

template <int D>
__global__ void __launch_bounds__(32 * kMergeRows) prefill_merge_kernel(const PrefillParams p,
                                                                         const PrefillMergeItem* merge) {
  constexpr int kCols = D / 32;  // columns per lane: 4 or 2
  using Cols = std::conditional_t<kCols == 4, float4, float2>;
  const PrefillMergeItem mi = merge[blockIdx.x];
  const PrefillRow row = p.rows[mi.row];
  const int lane = threadIdx.x & 31;
  const int32_t r = static_cast<int32_t>(blockIdx.y) * kMergeRows + (threadIdx.x >> 5), m = mi.m0 + r;
  pdl_wait();  // every thread: the pieces' rows are the prefill kernel's, and the merge completes after it
  if (m >= row.n_tokens * p.group) return;
  const int64_t first = static_cast<int64_t>(mi.partial0) * kPrefillTileRows + r;  // piece i at first + i·rows
  const auto lse_of = [&](int32_t i) { return i < mi.pieces ? p.partial_lse[first + int64_t{i} * kPrefillTileRows] : -INFINITY; };
  float mine = lse_of(lane);  // this lane's piece of the first round
  float top = mine;
  for (int32_t i = lane + 32; i < mi.pieces; i += 32) top = fmaxf(top, lse_of(i));
  for (int off = 16; off > 0; off >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, off));
  float acc[kCols] = {};
  float total = 0.0f;  // this lane's pieces' weights; summed over the warp at the end
  if (top != -INFINITY) {
    for (int32_t base = 0; base < mi.pieces; base += 32) {
      if (base > 0) mine = lse_of(base + lane);
      const float w = mine == -INFINITY ? 0.0f : exp2f(mine - top);
      total += w;
      const int32_t n = min(32, mi.pieces - base);
      const float* src = p.partial_o + (first + int64_t{base} * kPrefillTileRows) * D + kCols * lane;
#pragma unroll kMergeDepth
      for (int32_t j = 0; j < n; ++j) {
        const float wgt = __shfl_sync(0xffffffffu, w, j);
        const Cols v = *reinterpret_cast<const Cols*>(src + int64_t{j} * kPrefillTileRows * D);
        acc[0] = fmaf(wgt, v.x, acc[0]);
        acc[1] = fmaf(wgt, v.y, acc[1]);
        if constexpr (kCols == 4) {
          acc[2] = fmaf(wgt, v.z, acc[2]);
          acc[3] = fmaf(wgt, v.w, acc[3]);
        }
      }
    }
    for (int off = 16; off > 0; off >>= 1) total += __shfl_xor_sync(0xffffffffu, total, off);
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  bf16* dst = prefill::output_row<D>(p, row, m) + kCols * lane;
#pragma unroll
  for (int c = 0; c < kCols; c += 2) {
    *reinterpret_cast<uint32_t*>(dst + c) = attn::pack_bf16x2(acc[c] * inv, acc[c + 1] * inv);
  }
}

}  // namespace

PrefillAttention::PrefillAttention(const PrefillConfig& config, std::source_location loc) : config_(config) {
  check(config.head_dim == 64 || config.head_dim == 128, "PrefillAttention: head_dim must be 64 or 128", loc);
  check(config.group >= 1 && config.group <= 64, "PrefillAttention: group must be 1..64", loc);
  const int32_t P = config.page_tokens;
  check(P == 16 || P == 32 || P == 64 || P == 128, "PrefillAttention: page_tokens must be 16, 32, 64 or 128", loc);
  int device = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  const bool sm90 = major == 9 && minor == 0;
  check(config.kernel != PrefillKernel::kWgmma || sm90,
        "PrefillAttention: the wgmma kernel needs compute capability 9.0 (sm_90a)", loc);
  kernel_ = config.kernel == PrefillKernel::kAuto ? (sm90 ? PrefillKernel::kWgmma : PrefillKernel::kMmaSync)
                                                  : config.kernel;
  check(config.split_ctas >= 0, "PrefillAttention: split_ctas must be ≥ 0", loc);
  int sms = 0, per_sm = 1;  // resident CTAs per SM: the Hopper kernel takes one's whole shared memory
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (kernel_ == PrefillKernel::kWgmma) {
    prefill::prepare_sm90(config.head_dim);
  } else {
    const int smem = config.head_dim == 64 ? PrefillSmem<64>::kBytes : PrefillSmem<128>::kBytes;
    const void* kernel = config.head_dim == 64 ? prefill_kernel<64>() : prefill_kernel<128>();
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  }
  split_ctas_ = config.split_ctas > 0 ? config.split_ctas : std::max(1, sms * std::max(per_sm, 1));
  plan_uploaded_ = CudaEvent(cudaEventDisableTiming, loc);
}

PrefillAttention::~PrefillAttention() {
  // The last upload may still read the staging buffer.
  if (plan_uploaded_.get() != nullptr) (void)cudaEventSynchronize(plan_uploaded_.get());
}

void PrefillAttention::plan(std::span<const PrefillRow> rows, cudaStream_t stream, std::source_location loc) {
  check(rows.size() < INT32_MAX, "PrefillAttention::plan: too many rows", loc);
  Planned next;
  next.rows = static_cast<int32_t>(rows.size());
  for (const PrefillRow& r : rows) {
    check(r.q_row0 >= 0 && r.n_tokens >= 0 && r.q_pos0 >= 0 && r.kv_head >= 0,
          "PrefillAttention::plan: negative row field", loc);
    check(int64_t{r.q_pos0} + r.n_tokens < INT32_MAX, "PrefillAttention::plan: positions past int32", loc);
    check(int64_t{r.n_tokens} * config_.group < INT32_MAX, "PrefillAttention::plan: n_tokens · group past int32", loc);
    check(r.mask == MaskKind::kCausal || r.mask == MaskKind::kBand || r.mask == MaskKind::kBlocks,
          "PrefillAttention::plan: unknown mask kind", loc);
    check(r.mask != MaskKind::kBand || (r.sink >= 0 && r.local >= 0),
          "PrefillAttention::plan: band sink/local must be ≥ 0", loc);
    check(r.mask != MaskKind::kBlocks ||
              (r.n_kblocks > 0 && r.block_offset >= 0 && r.first_qblock >= 0 && r.block_tokens > 0),
          "PrefillAttention::plan: block mask rows need n_kblocks > 0, block_offset ≥ 0, first_qblock ≥ 0 and "
          "block_tokens > 0",
          loc);
    check(r.mask != MaskKind::kBlocks || r.first_qblock <= r.q_pos0 / r.block_tokens,
          "PrefillAttention::plan: a block mask row's first query lies before its first_qblock", loc);
    if (r.new_kv != 0) {
      next.new_kv = true;
      next.new_rows = std::max<int64_t>(next.new_rows, int64_t{r.q_row0} + r.n_tokens);
      next.new_kv_heads = std::max(next.new_kv_heads, r.kv_head + 1);
    }
    next.blocks = next.blocks || r.mask == MaskKind::kBlocks;
    if (r.mask == MaskKind::kBlocks) next.min_block = std::min(next.min_block, r.block_tokens);
  }
  PrefillSplit split =
      plan_prefill_split(rows, config_.group, config_.page_tokens, split_ctas_, config_.min_split_keys);
  std::vector<PrefillWorkItem>& work = split.work;

  const auto n_work = work.size(), n_merge = split.merge.size();
  const size_t merge_off = 4 + kWorkInts * n_work;
  const size_t rows_off = merge_off + kMergeInts * n_merge;  // even: PrefillRow is 8-byte aligned
  const size_t total = rows_off + kRowInts * rows.size();
  // From here a failure leaves no plan: the device blob may hold part of the new one.
  planned_.rows = -1;
  CUDA_CHECK(cudaEventSynchronize(plan_uploaded_.get()));
  if (total > plan_host_.size()) {
    const size_t cap = std::max(total, plan_host_.size() * 2);
    plan_host_.reset();  // before the new allocation: at most one staging buffer at a time
    plan_host_ = PinnedBuffer<int32_t>(cap, loc);
  }
  if (total > plan_dev_.size()) {
    CUDA_CHECK(cudaDeviceSynchronize());  // a running kernel may still read the old plan
    plan_dev_ = DeviceBuffer<int32_t>(std::max(total, plan_dev_.size() * 2), loc);
  }
  int32_t* host = plan_host_.data();
  host[0] = static_cast<int32_t>(n_work);
  host[1] = static_cast<int32_t>(rows.size());
  host[2] = static_cast<int32_t>(n_merge);
  host[3] = 0;
  std::memcpy(host + 4, work.data(), sizeof(PrefillWorkItem) * n_work);
  std::memcpy(host + merge_off, split.merge.data(), sizeof(PrefillMergeItem) * n_merge);
  std::memcpy(host + rows_off, rows.data(), sizeof(PrefillRow) * rows.size());
  CUDA_CHECK(cudaMemcpyAsync(plan_dev_.data(), host, sizeof(int32_t) * total, cudaMemcpyHostToDevice, stream));
  CUDA_CHECK(cudaEventRecord(plan_uploaded_.get(), stream));
  work_ = std::move(work);
  merge_ = std::move(split.merge);
  num_partials_ = split.num_partials;
  planned_ = next;
}

int64_t PrefillAttention::workspace_floats() const {
  return int64_t{num_partials_} * kPrefillTileRows * (config_.head_dim + 1);
}

void PrefillAttention::run(const PrefillArgs& args, cudaStream_t stream, std::source_location loc) const {
  check(planned_.rows >= 0, "PrefillAttention::run: no plan (plan() was not called or failed)", loc);
  const int32_t D = config_.head_dim;
  const attn::PoolView pool =
      attn::check_attention_args("PrefillAttention::run", args.kv, D, config_.page_tokens, args.q, args.q_stride,
                                 args.o, args.o_stride, args.pages, planned_.rows > 0, args.scale, loc);
  check(!planned_.new_kv || (args.k_new != nullptr && args.v_new != nullptr && is_aligned16(args.k_new) &&
                             is_aligned16(args.v_new) && args.kv_new_stride > 0 && args.kv_new_stride % 8 == 0),
        "PrefillAttention::run: rows with new_kv need aligned k_new / v_new and a stride multiple of 8", loc);
  check(!planned_.new_kv || args.kv_new_stride >= int64_t{planned_.new_kv_heads} * D,
        "PrefillAttention::run: kv_new_stride is shorter than the planned rows' KV heads", loc);
  check(!planned_.blocks || args.block_allowed != nullptr, "PrefillAttention::run: kBlocks rows need block_allowed",
        loc);

  const int64_t ws_floats = workspace_floats();
  check(ws_floats == 0 || (args.workspace != nullptr && is_aligned16(args.workspace) &&
                           args.workspace_floats >= ws_floats),
        "PrefillAttention::run: the plan splits keys and needs a 16-byte aligned workspace of workspace_floats()",
        loc);

  const int grid = static_cast<int>(work_.size());
  if (grid == 0) return;
  const size_t merge_off = 4 + kWorkInts * work_.size();
  const size_t rows_off = merge_off + kMergeInts * merge_.size();
  const int32_t* blob = plan_dev_.data();
  PrefillParams p;
  p.q = args.q;
  p.q_stride = args.q_stride;
  p.o = args.o;
  p.o_stride = args.o_stride;
  p.k_new = args.k_new;
  p.v_new = args.v_new;
  p.new_stride = args.kv_new_stride;
  p.pool = pool;
  p.indptr = args.pages.indptr;
  p.page_ids = args.pages.page_ids;
  p.page_pos0 = args.pages.page_pos0;
  p.page_len = args.pages.page_len;
  p.block_allowed = args.block_allowed;
  p.counts = blob;
  p.work = reinterpret_cast<const PrefillWorkItem*>(blob + 4);
  p.rows = reinterpret_cast<const PrefillRow*>(blob + rows_off);
  p.group = config_.group;
  p.scale_log2 = args.scale * kLog2e;
  p.skip_tiles = config_.skip_tiles ? 1 : 0;
  p.partial_o = ws_floats > 0 ? args.workspace : nullptr;
  p.partial_lse = ws_floats > 0 ? args.workspace + int64_t{num_partials_} * kPrefillTileRows * D : nullptr;
  if (kernel_ == PrefillKernel::kWgmma) {
    check(args.kv.num_pages * config_.page_tokens < INT32_MAX, "PrefillAttention::run: pool rows past int32", loc);
    prefill::BlockWalk walk = prefill::BlockWalk::kNone;
    if (planned_.blocks) {
      walk = sm90_small_blocks(planned_.min_block) ? prefill::BlockWalk::kUnits : prefill::BlockWalk::kTiles;
    }
    const int32_t box = sm90_box_tokens(planned_.min_block, config_.page_tokens);
    const prefill::Sm90Tensors t{args.kv.k,  args.kv.v,          args.kv.num_pages, config_.page_tokens,
                                 args.k_new, args.v_new,         args.kv_new_stride, planned_.new_rows,
                                 walk,       box};
    prefill::launch_sm90(p, grid, D, t, stream, loc);
  } else if (D == 64) {
    prefill_attention_paged_kernel<64><<<grid, kThreads, PrefillSmem<64>::kBytes, stream>>>(p);
    CUDA_CHECK_LAUNCH();
  } else {
    prefill_attention_paged_kernel<128><<<grid, kThreads, PrefillSmem<128>::kBytes, stream>>>(p);
    CUDA_CHECK_LAUNCH();
  }
  if (merge_.empty()) return;
  const dim3 merge_grid(static_cast<unsigned>(merge_.size()), kPrefillTileRows / kMergeRows);
  const auto* merge = reinterpret_cast<const PrefillMergeItem*>(blob + merge_off);
  // Programmatic: the merge's CTAs may start on SMs the pieces leave free and wait there.
  CUDA_CHECK(launch_kernel(D == 64 ? prefill_merge_kernel<64> : prefill_merge_kernel<128>, merge_grid,
                           dim3(32 * kMergeRows), 0, stream, /*programmatic=*/true, p, merge));
}

}  // namespace sparseserve::kernels::cuda
