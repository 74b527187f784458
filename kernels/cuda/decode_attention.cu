// Paged decode attention (see decode_attention.h for the contract).
//
// How it works. A CTA (4 warps) takes one work item: one (sequence, KV head) row and a range of its
// page list. Keys stream through shared memory in tiles of 64 slots (3-stage cp.async pipeline); warp
// w copies and computes keys 16w .. 16w+15 of each tile with its own online softmax, so no warp reads
// another's rows and the warps run their pipelines without CTA barriers. A warp's 16 slots lie in one
// list entry (P ≥ 16), so one read of the list per warp and tile gives all their addresses, and every
// other address in the loop is a per-lane constant plus a base: ~250 instructions per warp and tile
// (620 when each slot was located on its own, which left a CTA alone issue-bound). The math
// (decode_tile.cuh) is transposed, GQA as the mma's narrow side: Sᵀ = K·Qᵀ and Oᵀ += Vᵀ·Pᵀ on
// mma.sync with Qᵀ in registers for the whole CTA, so every K/V byte is read from memory once per
// group.
// At the end the 4 warps merge through shared memory; a row with one piece writes bf16 at once,
// otherwise each piece writes fp32 O/L plus lse = m + log2(L), and the CTA that finishes a row's last
// piece (an atomic count per row, reset by that CTA) merges the row's pieces (merge_row in
// decode_merge.cuh): one launch per call. A plan whose rows have at most DecodeConfig::cluster_ctas
// pieces launches in thread block clusters: the pieces of a row in one cluster first combine through
// distributed shared memory (combine_segment), so a row inside one cluster writes its output there
// and skips the global merge (batch 16 at 8K: +1.7% on the H200). Work pieces are sized on the host
// to fill one wave of resident CTAs (plan_decode_split). With programmatic launch the CTAs read their
// work item, and copy their first tiles when the row's list is plan-time data, while the previous
// kernel finishes (launch.cuh).
#include "kernels/cuda/decode_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/decode_merge.cuh"
#include "kernels/cuda/decode_tile.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace sparseserve::kernels::cuda {

namespace {

using attn::bf16;
using namespace decode;  // the kernel's parameters, constants and split-row merge (decode_merge.cuh)

constexpr int kBN = 64;  // key slots per tile (16 per warp)
constexpr int kStages = 3;
constexpr float kLog2e = 1.4426950408889634f;

// Offsets (int32 units) of the plan blob's parts.
struct PlanLayout {
  int32_t work, row_split, rows, total;
  PlanLayout(int32_t capacity, int32_t max_rows)
      : work(4), row_split(4 + 4 * capacity), rows(4 + 4 * capacity + 2 * max_rows),
        total(4 + 4 * capacity + (2 + kRowInts) * max_rows) {}
  static constexpr int32_t kRowInts = sizeof(DecodeRow) / 4;
};

template <int D>
struct DecodeSmem {
  static constexpr int kTileBytes = kBN * D * 2;
  static constexpr int kPipeBytes = kStages * 2 * kTileBytes;                 // K and V per stage
  static constexpr int kMergeBytes = WarpReduction<D, kWarps>::kBytes;
  static constexpr int kQOffset = kPipeBytes > kMergeBytes ? kPipeBytes : kMergeBytes;
  // Each stage's slices, [kStages][kWarps] int2 {first key position, keys} (WarpSlice pos0, valid).
  static constexpr int kSliceOffset = kQOffset + 16 * D * 2;
  // A split piece's result for its cluster segment (cluster launch): O [16][D] fp32, lse [16].
  static constexpr int kStageOffset = kSliceOffset + kStages * kWarps * 8;
  static constexpr int kBytes = kStageOffset + 16 * D * 4 + 16 * 4;
};

// Where one warp's 16 slots u .. u+15 of a tile come from. They lie in one list entry (P ≥ 16 and u a
// multiple of 16): k / v point at slot u's rows and `valid` slots from there hold keys, the first at
// position pos0. Past the piece's entries valid is 0 and k / v are the pool base. Either way the 16
// rows from k / v are inside the pool, so the zero-filling copies of empty slots need no other
// address. Read one tile ahead of the copies (the list loads' latency then overlaps a tile's math).
// Decode rows have page keys only (rk.end_slot == rk.page_slots: no "new" keys as in prefill).
struct WarpSlice {
  const bf16* k;
  const bf16* v;
  int32_t valid, pos0;
};

template <int D, bool kL2Only = false>
__device__ __forceinline__ WarpSlice warp_slice(const attn::RowKeys& rk, const attn::PoolView& pool, int32_t u) {
  if (u >= rk.page_slots) return {pool.k, pool.v, 0, 0};
  const int32_t e = u >> pool.page_shift, off = u & ((1 << pool.page_shift) - 1);
  const int64_t row = (static_cast<int64_t>(attn::list_load<kL2Only>(rk.page_ids + e)) << pool.page_shift) + off;
  const int32_t valid = min(16, max(0, attn::list_load<kL2Only>(rk.page_len + e) - off));
  return {pool.k + row * D, pool.v + row * D, valid, attn::list_load<kL2Only>(rk.page_pos0 + e) + off};
}

// A lane's part of the copies of its warp's 16 slots of every tile (load_warp_rows), computed once:
// the lane copies chunk c of rows r, r + kRowsPerPass, ... of the slice. As key0 % 8 == 0 and
// r < kRowsPerPass (a power of two), row key0 + r + i·kRowsPerPass has the swizzle (row & 7) =
// r ^ ((i·kRowsPerPass) & 7): its chunk's offset in the tile is smem[i % kXors], the pass-0 offset
// with the chunk XORed by that constant, plus i·kRowsPerPass rows.
template <int D>
struct CopyLane {
  static constexpr int kChunks = D / 8, kRowsPerPass = 32 / kChunks, kPasses = 16 / kRowsPerPass;
  static constexpr int kXors = 8 / kRowsPerPass;
  static_assert(kRowsPerPass <= 8 && 8 % kRowsPerPass == 0);
  int32_t src;  // elements from the slice's first row: r·D + 8c
  int32_t r;
  uint32_t smem[kXors];
  __device__ __forceinline__ explicit CopyLane(int key0) {
    const int lane = static_cast<int>(threadIdx.x) & 31, c = lane % kChunks;
    r = lane / kChunks;
    src = r * D + c * 8;
    const uint32_t base = attn::tile_offset<D>(key0 + r, c);
#pragma unroll
    for (int x = 0; x < kXors; ++x) smem[x] = base ^ (((x * kRowsPerPass) & 7) << 4);
  }
};

// Issues the cp.async copies of the warp's 16 slots key0 .. key0 + 15 of a tile (the rows it alone
// reads) into the K and V tiles ([kBN][D], swizzled; empty slots zero-filled) and records the slice's
// first position and key count in *rec for the math; the warp's 32 lanes take part. src = warp_slice
// of the slots. Each warp keeps its own rows of the ring, so no CTA barrier orders their reuse. Every
// address is a per-lane constant (CopyLane) plus the slice's or the stage's base. No L2 cache hint
// (decode_attention.cuh, cp_async16).
template <int D>
__device__ __forceinline__ void load_warp_rows(uint32_t k_tile, uint32_t v_tile, int2* rec, const WarpSlice& src,
                                               const CopyLane<D>& cl) {
  using CL = CopyLane<D>;
  const bf16* kp = src.k + cl.src;
  const bf16* vp = src.v + cl.src;
  const int32_t rows = src.valid - cl.r;  // pass i copies a key iff i·kRowsPerPass < rows
#pragma unroll
  for (int i = 0; i < CL::kPasses; ++i) {
    const uint32_t off = cl.smem[i % CL::kXors] + i * CL::kRowsPerPass * CL::kChunks * 16;
    const bool valid = i * CL::kRowsPerPass < rows;
    attn::cp_async16(k_tile + off, kp + i * CL::kRowsPerPass * D, valid);
    attn::cp_async16(v_tile + off, vp + i * CL::kRowsPerPass * D, valid);
  }
  if ((threadIdx.x & 31) == 0) *rec = make_int2(src.pos0, src.valid);
}

template <int D, int NB>
__global__ void __launch_bounds__(kThreads) decode_attention_paged_kernel(const DecodeParams p) {
  using Smem = DecodeSmem<D>;
  constexpr int kChunks = D / 8;
  extern __shared__ __align__(128) uint8_t smem[];
  // The work item is read together with the count (the grid never exceeds the plan's capacity), so
  // the two loads overlap.
  const DecodeWorkItem w = p.work[blockIdx.x];
  if (static_cast<int32_t>(blockIdx.x) >= p.counts[0]) {  // surplus CTA of a capacity grid
    // An empty plan still completes after the previous kernel (launch.cuh: kernels later in the
    // stream rely on it); one waiting CTA is enough.
    if (blockIdx.x == 0) pdl_wait();
    return;
  }
  const DecodeRow row = p.rows[w.row];
  const int2 split = p.row_split[w.row];  // {pieces, first partial}
  // A split row's pieces are consecutive CTAs [f, f + pieces). In a cluster launch those in one
  // cluster (a segment) combine first through distributed shared memory (combine_segment), so the
  // row's global merge sees n_seg partials, one per segment (slot first partial + seg); a row inside
  // one cluster needs no global merge at all. Without clusters every piece is its own segment.
  const ClusterPosition cp = cluster_position();
  const int32_t x = static_cast<int32_t>(blockIdx.x), C = cp.size;
  const bool clustered = C > 1 && w.partial >= 0;
  const int32_t f = x - (w.partial - split.y);
  const int32_t n_seg = (f + split.x - 1) / C - f / C + 1, seg = x / C - f / C;
  // Programmatic launch (launch.cuh): the plan and the list's indptr (plan-time data, see
  // DecodeArgs) are read before the wait; so are the list's entries and the K/V of the piece's first
  // tiles when the row says they are plan-time too (DecodeRow::pages_plan_time, below). Everything
  // else (q, the partials) may be the previous kernel's output or input.
  const int32_t first = p.indptr[w.row];
  const int32_t n_entries = p.indptr[w.row + 1] - first;
  pdl_launch_dependents();
  const int tid = threadIdx.x, warp = tid >> 5;
  const int G = p.group;

  const int32_t eb = min(w.page_begin, n_entries), ee = min(w.page_end, n_entries);
  const int shift = p.pool.page_shift;
  const attn::RowKeys rk{p.page_ids + first, p.page_pos0 + first, p.page_len + first, ee << shift, ee << shift,
                         0, nullptr, nullptr, 0};
  const int32_t u_begin = eb << shift;
  const int n_tiles = max(0, (rk.end_slot - u_begin + kBN - 1) / kBN);

  const uint32_t pipe = attn::smem_addr(smem);
  const uint32_t q_tile = attn::smem_addr(smem + Smem::kQOffset);
  int2* slices = reinterpret_cast<int2*>(smem + Smem::kSliceOffset);  // [kStages][kWarps]
  float* stage_o = reinterpret_cast<float*>(smem + Smem::kStageOffset);  // [16][D], then lse [16]
  const auto k_stage = [&](int s) { return pipe + s * 2 * Smem::kTileBytes; };
  const auto v_stage = [&](int s) { return pipe + s * 2 * Smem::kTileBytes + Smem::kTileBytes; };
  const int key0 = warp * 16;  // this warp's 16 slots of every tile
  const CopyLane<D> cl(key0);
  // Page metadata is read one tile ahead of the copies that need it (warp_slice), so its latency
  // overlaps the previous tile's math instead of stalling the copy issue.
  WarpSlice src[kStages];
  // Early copies: the first `early` tiles (at most the kStages − 1 the prologue fills), those wholly
  // before the row's last list entry (whose page this step's append may still be writing), are
  // copied before the wait, overlapping the previous kernel's tail (H200, 8 calls per graph: batch 1
  // +10% at 8K, +1.8% at 128K; batch 16 +2% at 8K). Each is its own copy group, as in the loop. Their
  // list reads bypass L1 (attn::list_load).
  const int32_t early_slots = row.pages_plan_time ? max(0, n_entries - 1) << shift : 0;
  const int early = min(min(n_tiles, kStages - 1), max(0, (early_slots - u_begin) / kBN));
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < early) {
      src[s] = warp_slice<D, true>(rk, p.pool, u_begin + s * kBN + key0);
      load_warp_rows<D>(k_stage(s), v_stage(s), slices + s * kWarps + warp, src[s], cl);
      attn::cp_async_commit();
    }
  }
  pdl_wait();

  // The merge's mbarrier (merge_row), initialised here, off the end of the CTA's critical path; the
  // barrier after the Q stores publishes it to the CTA, and merge_row's proxy fence to the bulk copy.
  __shared__ __align__(8) uint64_t merge_bar;
  if (tid == 0) wgmma::mbar_init(attn::smem_addr(&merge_bar), 1);
  // Q (rows 0..G-1 = the group's heads, rows G..15 zero) by plain loads, issued ahead of the
  // remaining tile copies and stored after them, so no copy group waits for Q or Q for a copy group
  // (as a cp.async group first in line it cost the sparse batch-1 step 2%: 13.7 against 13.4 us one
  // call per graph, 10.5 against 10.25 us 8 per graph).
  constexpr int kQPasses = 16 * kChunks / kThreads;
  static_assert(16 * kChunks % kThreads == 0, "Q's 16-byte chunks divide among the threads");
  const bf16* q_src = p.q + row.q_row * p.q_stride + static_cast<int64_t>(row.kv_head) * G * D;
  uint4 qv[kQPasses];
#pragma unroll
  for (int j = 0; j < kQPasses; ++j) {
    const int i = tid + j * kThreads, r = i / kChunks, c = i % kChunks;
    qv[j] = r < G ? *reinterpret_cast<const uint4*>(q_src + r * D + c * 8) : make_uint4(0, 0, 0, 0);
  }
#pragma unroll
  for (int s = 0; s < kStages; ++s) {
    if (s >= early) src[s] = warp_slice<D>(rk, p.pool, u_begin + s * kBN + key0);
  }
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s >= early) {
      if (s < n_tiles) {
        load_warp_rows<D>(k_stage(s), v_stage(s), slices + s * kWarps + warp, src[s], cl);
      }
      attn::cp_async_commit();
    }
  }
  WarpSlice next = src[kStages - 1];
#pragma unroll
  for (int j = 0; j < kQPasses; ++j) {
    const int i = tid + j * kThreads;
    *reinterpret_cast<uint4*>(smem + Smem::kQOffset + attn::tile_offset<D>(i / kChunks, i % kChunks)) = qv[j];
  }
  __syncthreads();
  uint32_t qb[D / 16][NB][2];
  load_q_fragments<D, NB>(qb, q_tile);

  const attn::MaskParams mp{static_cast<int32_t>(row.mask), row.sink, row.local, 1, 0};
  const int32_t t = row.q_pos;
  WarpState<D, NB> state;
  state.init();
  const TileOffsets offs = tile_offsets<D>(key0);

  // Stages of tile it (st) and of tile it + kStages − 1 (the one issued now: the stage tile it − 1 used).
  for (int it = 0, st = 0, nst = kStages - 1; it < n_tiles; ++it) {
    attn::cp_async_wait<kStages - 2>();
    __syncwarp();  // this warp's rows of tile `it` visible to its lanes; its rows of tile it − 1 read
    {
      const int nt = it + kStages - 1;
      if (nt < n_tiles) {
        load_warp_rows<D>(k_stage(nst), v_stage(nst), slices + nst * kWarps + warp, next, cl);
        next = warp_slice<D>(rk, p.pool, u_begin + (nt + 1) * kBN + key0);
      }
      attn::cp_async_commit();
    }
    tile_step<D, NB>(state, k_stage(st), v_stage(st), slices[st * kWarps + warp], offs, qb, mp, t, p.scale_log2);
    st = st + 1 == kStages ? 0 : st + 1;
    nst = nst + 1 == kStages ? 0 : nst + 1;
  }
  attn::cp_async_wait<0>();
  __syncthreads();  // the pipeline buffers become the merge buffers

  // Merge the 4 warps through the idle pipeline buffers.
  using Reduction = WarpReduction<D, kWarps>;
  float* red = reinterpret_cast<float*>(smem);
  Reduction::stage(red, state, G);
  __syncthreads();

  for (int idx = tid; idx < G * kChunks; idx += kThreads) {
    const int h = idx / kChunks, c = idx % kChunks;
    float acc[8];
    const float lse = Reduction::combine(red, h, c, acc);
    if (w.partial < 0) {
      bf16* dst = p.o + row.q_row * p.o_stride + static_cast<int64_t>(row.kv_head * G + h) * D + 8 * c;
      *reinterpret_cast<uint4*>(dst) = float_to_bf16x8(acc);
    } else if (clustered) {
      float* dst = stage_o + h * D + 8 * c;
      reinterpret_cast<float4*>(dst)[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
      reinterpret_cast<float4*>(dst)[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
      if (c == 0) stage_o[16 * D + h] = lse;
    } else {
      float* dst = p.partial_o + (static_cast<int64_t>(w.partial) * G + h) * D + 8 * c;
      reinterpret_cast<float4*>(dst)[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
      reinterpret_cast<float4*>(dst)[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
      if (c == 0) p.partial_lse[w.partial * G + h] = lse;
    }
  }
  if (w.partial < 0) return;
  if (clustered) {
    cluster_arrive();  // every piece of the cluster staged
    cluster_wait();
    const int32_t base = x - cp.rank;
    const int32_t s0 = max(f, base), s1 = min(f + split.x, base + C);
    combine_segment<D>(p, row, attn::smem_addr(stage_o), s0 - base, s1 - s0, x - s0, n_seg, split.y + seg);
    cluster_arrive();  // this CTA is done reading the others' stages (the wait is before it exits)
  }
  if (n_seg > 1) {
    // The CTA that finishes the row's last piece merges the row's segments (no second launch). The
    // barrier orders every thread's partial stores before thread 0's release-add (cumulative at GPU
    // scope); the merging CTA's acquire-add and barrier order its reads of the others' partials after
    // their release-adds. Every piece counts, so the count reaches split.x once all have stored.
    __shared__ int merge_here;
    __syncthreads();
    if (tid == 0) {
      const int done = atomic_add_acq_rel_gpu(p.row_done + w.row, 1) + 1;
      merge_here = done == split.x;
    }
    __syncthreads();
    if (merge_here) {
      static_assert(Smem::kPipeBytes >= kMaxRowPieces * 16 * 4 + 16 * D * 4,
                    "merge_row holds the weights and at least one piece in the pipeline buffers");
      merge_row<D>(p, row, make_int2(n_seg, split.y), smem, Smem::kPipeBytes, attn::smem_addr(&merge_bar));
      if (tid == 0) p.row_done[w.row] = 0;  // ready for the next launch (graph replays)
    }
  }
  if (clustered) cluster_wait();  // no CTA leaves while another may still read its stage
}

__global__ void __launch_bounds__(kThreads) decode_fill_block_positions_kernel(const int32_t* indptr, const int32_t* blocks,
                                                                          const int32_t* seq_lens, int32_t page_tokens,
                                                                          int32_t* page_pos0, int32_t* page_len) {
  const int r = blockIdx.x;
  const int32_t len = seq_lens[r];
  for (int32_t e = indptr[r] + threadIdx.x; e < indptr[r + 1]; e += blockDim.x) {
    const int32_t p0 = blocks[e] * page_tokens;
    page_pos0[e] = p0;
    page_len[e] = min(page_tokens, len - p0);
  }
}

// The kernel for a head dim and group: NB = 1 block of 8 heads up to G = 8, else 2.
using DecodeKernel = void (*)(DecodeParams);
DecodeKernel decode_kernel(int32_t head_dim, int32_t group) {
  if (head_dim == 64) return group <= 8 ? decode_attention_paged_kernel<64, 1> : decode_attention_paged_kernel<64, 2>;
  return group <= 8 ? decode_attention_paged_kernel<128, 1> : decode_attention_paged_kernel<128, 2>;
}
int decode_smem_bytes(int32_t head_dim) { return head_dim == 64 ? DecodeSmem<64>::kBytes : DecodeSmem<128>::kBytes; }

}  // namespace

void fill_block_positions(const int32_t* indptr, const int32_t* blocks, const int32_t* seq_lens, int32_t rows,
                          int32_t page_tokens, int32_t* page_pos0, int32_t* page_len, cudaStream_t stream,
                          std::source_location loc) {
  check(rows >= 0 && page_tokens > 0, "fill_block_positions: bad rows or page_tokens", loc);
  if (rows == 0) return;
  check(indptr != nullptr && blocks != nullptr && seq_lens != nullptr && page_pos0 != nullptr && page_len != nullptr,
        "fill_block_positions: null array", loc);
  decode_fill_block_positions_kernel<<<rows, kThreads, 0, stream>>>(indptr, blocks, seq_lens, page_tokens, page_pos0,
                                                                    page_len);
  CUDA_CHECK_LAUNCH();
}

DecodeAttention::DecodeAttention(const DecodeConfig& config, std::source_location loc) : config_(config) {
  check(config.head_dim == 64 || config.head_dim == 128, "DecodeAttention: head_dim must be 64 or 128", loc);
  check(config.group >= 1 && config.group <= 16, "DecodeAttention: group must be 1..16", loc);
  const int32_t P = config.page_tokens;
  check(P == 16 || P == 32 || P == 64 || P == 128, "DecodeAttention: page_tokens must be 16, 32, 64 or 128", loc);
  check(config.max_rows >= 1, "DecodeAttention: max_rows must be positive", loc);
  check(config.min_chunk_tokens >= 1, "DecodeAttention: min_chunk_tokens must be positive", loc);

  int dev = 0, sms = 0, per_sm = 0, major = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  const int smem = decode_smem_bytes(config.head_dim);
  const void* kernel = reinterpret_cast<const void*>(decode_kernel(config.head_dim, config.group));
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  check(per_sm >= 1, "DecodeAttention: the kernel does not fit on this device", loc);
  check(config.target_ctas >= 0 && config.target_ctas <= kMaxRowPieces, "DecodeAttention: target_ctas must be 0..640",
        loc);
  const int32_t cl = config.cluster_ctas;
  check(cl == 1 || cl == 2 || cl == 4 || cl == kMaxCluster, "DecodeAttention: cluster_ctas must be 1, 2, 4 or 8", loc);
  cluster_ = major >= 9 ? cl : 1;
  int32_t resident = sms * per_sm;
  if (cluster_ > 1) {  // whole clusters only: a GPC's SMs may leave a few CTA slots unused
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = static_cast<unsigned>(cluster_);
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cudaLaunchConfig_t lc{};
    lc.gridDim = dim3(static_cast<unsigned>(cluster_ * sms));
    lc.blockDim = dim3(kThreads);
    lc.dynamicSmemBytes = static_cast<size_t>(smem);
    lc.attrs = &attr;
    lc.numAttrs = 1;
    int clusters = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &lc));
    if (clusters >= 1) {
      resident = clusters * cluster_;
    } else {
      cluster_ = 1;  // no cluster fits resident (a partitioned device): launch without clusters
    }
  }
  target_ctas_ = config.target_ctas > 0 ? config.target_ctas : std::min(resident, kMaxRowPieces / cluster_ * cluster_);
  work_capacity_ = (config.max_rows + target_ctas_ + cluster_ - 1) / cluster_ * cluster_;

  const PlanLayout layout(work_capacity_, config.max_rows);
  plan_dev_ = DeviceBuffer<int32_t>(static_cast<size_t>(layout.total), loc);
  plan_host_ = PinnedBuffer<int32_t>(static_cast<size_t>(layout.total), loc);
  plan_uploaded_ = CudaEvent(cudaEventDisableTiming, loc);
  const auto slots = static_cast<size_t>(work_capacity_) * static_cast<size_t>(config.group);
  partial_o_ = DeviceBuffer<float>(slots * static_cast<size_t>(config.head_dim), loc);
  partial_lse_ = DeviceBuffer<float>(slots, loc);
  row_done_ = DeviceBuffer<int32_t>(static_cast<size_t>(config.max_rows), loc);
  CUDA_CHECK(cudaMemset(row_done_.data(), 0, row_done_.bytes()));
  // Counts start at zero, so a run before the first plan's upload does nothing.
  CUDA_CHECK(cudaMemset(plan_dev_.data(), 0, plan_dev_.bytes()));
  // The zeroing ran on the default stream, which a non-blocking stream does not wait for: it is done
  // before a plan can be uploaded on any stream.
  CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

size_t DecodeAttention::device_bytes_bound(const DecodeConfig& config) {
  const int32_t target = config.target_ctas > 0 ? config.target_ctas : kMaxRowPieces;
  const int32_t capacity = config.max_rows + target + kMaxCluster - 1;  // rounded up to whole clusters
  const PlanLayout layout(capacity, config.max_rows);
  const auto slots = static_cast<size_t>(capacity) * static_cast<size_t>(config.group);
  return sizeof(int32_t) * static_cast<size_t>(layout.total) +
         sizeof(float) * slots * (static_cast<size_t>(config.head_dim) + 1) +
         sizeof(int32_t) * static_cast<size_t>(config.max_rows);
}

DecodeAttention::~DecodeAttention() {
  // The last upload may still read the staging buffer.
  if (plan_uploaded_.get() != nullptr) (void)cudaEventSynchronize(plan_uploaded_.get());
}

void DecodeAttention::plan(std::span<const DecodeRow> rows, std::span<const int32_t> row_pages, cudaStream_t stream,
                           std::source_location loc) {
  const auto n_rows = static_cast<int32_t>(rows.size());
  check(n_rows <= config_.max_rows, "DecodeAttention::plan: more rows than config.max_rows", loc);
  check(row_pages.size() == rows.size(), "DecodeAttention::plan: row_pages must have one entry per row", loc);
  for (const DecodeRow& r : rows) {
    check(r.q_row >= 0 && r.kv_head >= 0 && r.q_pos >= 0, "DecodeAttention::plan: negative row field", loc);
    check(r.mask == MaskKind::kCausal || r.mask == MaskKind::kBand,
          "DecodeAttention::plan: decode rows take kCausal or kBand masks", loc);
    check(r.mask != MaskKind::kBand || (r.sink >= 0 && r.local >= 0),
          "DecodeAttention::plan: band sink/local must be ≥ 0", loc);
  }
  DecodeSplit split =
      plan_decode_split(row_pages, config_.page_tokens, target_ctas_, work_capacity_, config_.min_chunk_tokens);
  const auto& splits = split.row_splits;
  const int32_t most = splits.empty() ? 1 : *std::max_element(splits.begin(), splits.end());
  // List entries of the longest piece: a split row's pieces hold at most chunk_pages each, an unsplit
  // row (row_pages ≤ chunk_pages) its whole list.
  const int32_t longest =
      row_pages.empty() ? 0 : std::min(split.chunk_pages, *std::max_element(row_pages.begin(), row_pages.end()));
  const int64_t longest_bytes =
      int64_t{longest} * config_.page_tokens * config_.head_dim * 2 * static_cast<int64_t>(sizeof(uint16_t));

  // From here a failure leaves no plan: the device blob may hold part of the new one.
  planned_rows_ = -1;
  // The previous upload must have left the staging buffer before it is rewritten.
  CUDA_CHECK(cudaEventSynchronize(plan_uploaded_.get()));
  const PlanLayout layout(work_capacity_, config_.max_rows);
  const auto n_work = static_cast<int32_t>(split.work.size());
  int32_t* host = plan_host_.data();
  host[0] = n_work;
  host[1] = n_rows;
  std::memcpy(host + layout.work, split.work.data(), sizeof(DecodeWorkItem) * split.work.size());
  for (int32_t r = 0; r < n_rows; ++r) {
    host[layout.row_split + 2 * r] = split.row_splits[static_cast<size_t>(r)];
    host[layout.row_split + 2 * r + 1] = split.row_partial0[static_cast<size_t>(r)];
  }
  std::memcpy(host + layout.rows, rows.data(), sizeof(DecodeRow) * rows.size());
  int32_t* dev = plan_dev_.data();
  CUDA_CHECK(cudaMemcpyAsync(dev, host, sizeof(int32_t) * static_cast<size_t>(layout.work + 4 * n_work),
                             cudaMemcpyHostToDevice, stream));
  if (n_rows > 0) {
    CUDA_CHECK(cudaMemcpyAsync(dev + layout.row_split, host + layout.row_split,
                               sizeof(int32_t) * 2 * static_cast<size_t>(n_rows), cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(dev + layout.rows, host + layout.rows, sizeof(DecodeRow) * rows.size(),
                               cudaMemcpyHostToDevice, stream));
  }
  CUDA_CHECK(cudaEventRecord(plan_uploaded_.get(), stream));
  split_ = std::move(split);
  launch_cluster_ = most <= cluster_ ? cluster_ : 1;
  launch_programmatic_ =
      config_.programmatic_launch && (launch_cluster_ == 1 || longest_bytes <= kProgrammaticClusterMaxPieceBytes);
  planned_rows_ = n_rows;
}

namespace attn {

PoolView check_attention_args(const char* who, const PagedKvPool& kv, int32_t head_dim, int32_t page_tokens,
                              const void* q, int64_t q_stride, const void* o, int64_t o_stride,
                              const KeyPageList& pages, bool rows_planned, float scale, std::source_location loc) {
  const auto require = [&](bool ok, const char* what) {
    if (!ok) throw InternalError(std::string(who) + ": " + what, loc);
  };
  require(kv.head_dim == head_dim, "kv.head_dim differs from config.head_dim");
  require(kv.page_tokens == page_tokens, "kv.page_tokens differs from the config");
  require(kv.num_pages >= 1, "kv.num_pages must be ≥ 1");
  require(q != nullptr && o != nullptr && kv.k != nullptr && kv.v != nullptr, "null q, o or pool");
  require(is_aligned16(q) && is_aligned16(o) && is_aligned16(kv.k) && is_aligned16(kv.v),
          "q, o, k and v must be 16-byte aligned");
  require(q_stride > 0 && o_stride > 0 && q_stride % 8 == 0 && o_stride % 8 == 0,
          "q_stride and o_stride must be positive multiples of 8 elements");
  require(!rows_planned || (pages.indptr != nullptr && pages.page_ids != nullptr && pages.page_pos0 != nullptr &&
                            pages.page_len != nullptr),
          "null page list");
  require(std::isfinite(scale) && scale > 0.0f, "scale must be positive");
  int shift = 0;
  while ((1 << shift) < page_tokens) ++shift;  // page_tokens is a power of two (checked at construction)
  return PoolView{kv.k, kv.v, shift};
}

}  // namespace attn

void DecodeAttention::run(const DecodeArgs& args, cudaStream_t stream, std::source_location loc) const {
  check(planned_rows_ >= 0, "DecodeAttention::run: no plan (plan() was not called or failed)", loc);
  const int32_t D = config_.head_dim;
  const attn::PoolView pool =
      attn::check_attention_args("DecodeAttention::run", args.kv, D, config_.page_tokens, args.q, args.q_stride,
                                 args.o, args.o_stride, args.pages, planned_rows_ > 0, args.scale, loc);

  const PlanLayout layout(work_capacity_, config_.max_rows);
  const int32_t* blob = plan_dev_.data();
  DecodeParams p;
  p.q = args.q;
  p.q_stride = args.q_stride;
  p.o = args.o;
  p.o_stride = args.o_stride;
  p.pool = pool;
  p.indptr = args.pages.indptr;
  p.page_ids = args.pages.page_ids;
  p.page_pos0 = args.pages.page_pos0;
  p.page_len = args.pages.page_len;
  p.counts = blob;
  p.work = reinterpret_cast<const DecodeWorkItem*>(blob + layout.work);
  p.row_split = reinterpret_cast<const int2*>(blob + layout.row_split);
  p.rows = reinterpret_cast<const DecodeRow*>(blob + layout.rows);
  p.partial_o = const_cast<float*>(partial_o_.data());
  p.partial_lse = const_cast<float*>(partial_lse_.data());
  p.row_done = const_cast<int32_t*>(row_done_.data());
  p.group = config_.group;
  p.scale_log2 = args.scale * kLog2e;

  const int work = static_cast<int>(split_.work.size());
  // A captured graph keeps this launch's cluster size and mode for later plans; the kernel is correct
  // with any (it reads its cluster's size), only the cost differs.
  const int32_t cl = launch_cluster_;
  const int grid = config_.cuda_graph ? work_capacity_ : (work + cl - 1) / cl * cl;
  if (grid == 0) return;
  CUDA_CHECK(launch_kernel_clustered(decode_kernel(D, config_.group), grid, kThreads, decode_smem_bytes(D), stream,
                                     launch_programmatic_, static_cast<unsigned>(cl), p));
}

}  // namespace sparseserve::kernels::cuda
