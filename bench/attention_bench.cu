// Times the paged attention kernels (kernels/cuda/prefill_attention.h, decode_attention.h) on one
// shape and prints one JSON line. bench/attention_bench.py drives it and times PyTorch SDPA (cuDNN
// and FlashAttention-2 backends) on the same shapes in the same run.
//
//   attention_bench --op prefill --seq 65536 [--batch 1] [--q-heads 32 --kv-heads 8 --dim 128]
//                   [--page 64] [--streaming-kv-heads 4 --sink 128 --local 4096]
//                   [--xattn-threshold 0.9 [--xattn-block 128 --xattn-stride 16 --xattn-max-ctas N]]
//   attention_bench --op decode --seq 131072 --batch 16 [--budget 4096 --select gpu|host]
//                   [--streaming-kv-heads 4 ...] [--graph 1] [--graph-calls 8] [--pdl 1]
//                   [--page-order shuffled|sequential|window:N|extents:N] [--read-ceiling 1 [--ceiling-ctas N]]
//                   [--v-offset BYTES]
//                   [--early 0|1]
//   common: --iters 50 --warmup 10 --rotate 0 (input sets to cycle through; 0: enough to exceed L2)
//
// Layouts are the engine's: q/o [tokens][q_heads·D], K/V in a page pool [pages][P][D] read through
// CSR page lists (page ids shuffled; decode --page-order sequential: in list order, as a fresh pool
// hands them out), prefill streaming rows read the prompt's own K/V from a
// contiguous [tokens][kv_heads·D] buffer (new_kv). Inputs are random (never zeros). Timing: CUDA
// events around each launch (decode: around each CUDA graph replay), after warm-up; median of iters.
// Decode --graph-calls N: each graph holds N calls on N rotation sets in a row, as an engine step's
// graph holds one call per layer, and the time reported is per call (graph time / N): the event
// and graph launch cost, paid once per step, is then spread as it is in the engine.
// Decode --read-ceiling 1 also times reading the same list's K/V pages without any math
// (paged_read_ceiling.cuh): the bound a paged decode can reach on this machine, reported as
// ceiling_median_ms / ceiling_tbps (a cp.async ring) and bulk_ceiling_median_ms / bulk_ceiling_tbps
// (bulk copies, TMA).
// Decode --v-offset BYTES places the V pool that many bytes past its allocation's start (K and V are
// otherwise two equal allocations, often an exact power of two apart): does the distance between a
// page's K and its V matter to DRAM? (It did not on the H200: RESULTS.md §3, session 16.)
// Prefill --xattn-threshold T: the retrieval rows take block masks that XAttentionSelect estimates
// (kernels/cuda/block_sparse.h) from the same q and keys in the same call, as the engine runs dynamic
// prefill sparsity; reported: the estimate alone (xattn_ms, its strided-GEMM TFLOP/s), the whole
// call (median_ms), and the share of causal blocks kept (density, from the last call's masks);
// --xattn-max-ctas sets XAttentionConfig::max_ctas (0: the default).
// Prefill --chunk C: the queries are the last C tokens of each sequence, over keys the pages hold (the
// earlier tokens and the chunk's own, as a chunk after a cached prefix runs in the engine; streaming
// rows band-masked over their sink's and window's pages); --min-split-keys / --split-ctas set PrefillConfig's key
// split (min_split_keys 0: never split); reported: ctas (pieces and whole tiles) and merges (split
// tiles).
// Decode with --budget: retrieval rows read only selected pages (page_select.h on the GPU, or a
// fixed random list from the host with --select host); streaming rows read sink + ring pages.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/block_sparse.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.cuh"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/page_select.h"
#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/wgmma.cuh"
#include "paged_read_ceiling.cuh"

namespace {

using namespace sparseserve::kernels::cuda;
using namespace sparseserve::kernels::cuda::bench;
using bf16 = __nv_bfloat16;

struct Options {
  std::string op = "decode";
  int64_t seq = 8192;
  int batch = 1;
  int q_heads = 32, kv_heads = 8, dim = 128, page = 64;
  int streaming_kv_heads = 0;  // the last N KV heads stream (band)
  int sink = 128, local = 4096;
  int budget = 0;  // decode: token budget of retrieval rows (0: all pages)
  std::string select = "gpu";
  int logical_page = 16;
  int iters = 50, warmup = 10, rotate = 0, graph = 1;
  int graph_calls = 1;  // decode: calls per graph (layers of a step)
  int pdl = 1;          // decode: programmatic dependent launch (DecodeConfig / PageSelectArgs)
  std::string kernel = "auto";  // prefill: auto | mma | wgmma
  int min_chunk = 0, target_ctas = 0;  // decode split (0: the library's defaults)
  int cluster = 0;                     // decode: DecodeConfig::cluster_ctas (0: the library's default)
  int early = 1;                       // decode: DecodeRow::pages_plan_time for lists the host uploads
  // decode: pool pages of the lists shuffled, in list order, shuffled within runs of N (window:N), or
  // in runs of N in list order placed at random (extents:N, as an allocator handing out runs would)
  std::string page_order = "shuffled";
  int read_ceiling = 0;                 // decode: also time the paged read ceiling
  int ceiling_ctas = 0;                 // decode: the ceiling kernels' CTAs (0: one full wave)
  int64_t v_offset = 0;                 // decode: bytes between the V allocation's start and the V pool
  double xattn_threshold = 0.0;         // prefill: > 0 estimates block masks for the retrieval rows
  int xattn_block = 128, xattn_stride = 16, xattn_max_ctas = 0;
  int64_t chunk = 0;                          // prefill: > 0 queries only the last `chunk` tokens
  int min_split_keys = -1, split_ctas = 0;    // prefill: PrefillConfig's (−1: the library's default)
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument("missing value for " + a);
    const std::string v = argv[++i];
    const auto num = [&] { return std::stoll(v); };
    if (a == "--op") o.op = v;
    else if (a == "--seq") o.seq = num();
    else if (a == "--batch") o.batch = static_cast<int>(num());
    else if (a == "--q-heads") o.q_heads = static_cast<int>(num());
    else if (a == "--kv-heads") o.kv_heads = static_cast<int>(num());
    else if (a == "--dim") o.dim = static_cast<int>(num());
    else if (a == "--page") o.page = static_cast<int>(num());
    else if (a == "--streaming-kv-heads") o.streaming_kv_heads = static_cast<int>(num());
    else if (a == "--sink") o.sink = static_cast<int>(num());
    else if (a == "--local") o.local = static_cast<int>(num());
    else if (a == "--budget") o.budget = static_cast<int>(num());
    else if (a == "--select") o.select = v;
    else if (a == "--logical-page") o.logical_page = static_cast<int>(num());
    else if (a == "--iters") o.iters = static_cast<int>(num());
    else if (a == "--warmup") o.warmup = static_cast<int>(num());
    else if (a == "--rotate") o.rotate = static_cast<int>(num());
    else if (a == "--graph") o.graph = static_cast<int>(num());
    else if (a == "--graph-calls") o.graph_calls = static_cast<int>(num());
    else if (a == "--pdl") o.pdl = static_cast<int>(num());
    else if (a == "--kernel") o.kernel = v;
    else if (a == "--min-chunk") o.min_chunk = static_cast<int>(num());
    else if (a == "--target-ctas") o.target_ctas = static_cast<int>(num());
    else if (a == "--cluster") o.cluster = static_cast<int>(num());
    else if (a == "--early") o.early = static_cast<int>(num());
    else if (a == "--page-order") o.page_order = v;
    else if (a == "--read-ceiling") o.read_ceiling = static_cast<int>(num());
    else if (a == "--ceiling-ctas") o.ceiling_ctas = static_cast<int>(num());
    else if (a == "--v-offset") o.v_offset = num();
    else if (a == "--xattn-threshold") o.xattn_threshold = std::stod(v);
    else if (a == "--xattn-block") o.xattn_block = static_cast<int>(num());
    else if (a == "--xattn-stride") o.xattn_stride = static_cast<int>(num());
    else if (a == "--xattn-max-ctas") o.xattn_max_ctas = static_cast<int>(num());
    else if (a == "--chunk") o.chunk = num();
    else if (a == "--min-split-keys") o.min_split_keys = static_cast<int>(num());
    else if (a == "--split-ctas") o.split_ctas = static_cast<int>(num());
    else throw std::invalid_argument("unknown option " + a);
  }
  if (o.op != "prefill" && o.op != "decode") throw std::invalid_argument("--op must be prefill or decode");
  if (o.q_heads % o.kv_heads != 0) throw std::invalid_argument("--q-heads must be a multiple of --kv-heads");
  if (o.streaming_kv_heads < 0 || o.streaming_kv_heads > o.kv_heads) throw std::invalid_argument("bad --streaming-kv-heads");
  if (o.select != "gpu" && o.select != "host") throw std::invalid_argument("--select must be gpu or host");
  const bool runs = o.page_order.rfind("window:", 0) == 0 || o.page_order.rfind("extents:", 0) == 0;
  if ((o.page_order != "shuffled" && o.page_order != "sequential" && !runs) ||
      (runs && std::stoll(o.page_order.substr(o.page_order.find(':') + 1)) < 1)) {
    throw std::invalid_argument("--page-order must be shuffled, sequential, window:N or extents:N (N ≥ 1)");
  }
  if (o.v_offset < 0 || o.v_offset % 16 != 0) throw std::invalid_argument("--v-offset must be a multiple of 16 bytes");
  if (o.graph_calls < 1) throw std::invalid_argument("--graph-calls must be ≥ 1");
  if (o.kernel != "auto" && o.kernel != "mma" && o.kernel != "wgmma") throw std::invalid_argument("--kernel must be auto, mma or wgmma");
  return o;
}

__global__ void fill_uniform_bf16_kernel(bf16* p, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint64_t x = i + seed * 0x9E3779B97F4A7C15ull;
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    const float u = static_cast<float>(x >> 40) * (1.0f / 16777216.0f);
    p[i] = __float2bfloat16((2.0f * u - 1.0f) * scale);
  }
}

void fill_uniform(DeviceBuffer<bf16>& b, uint64_t seed, float scale) {
  if (b.empty()) return;
  fill_uniform_bf16_kernel<<<1024, 256>>>(b.data(), b.size(), seed, scale);
  CUDA_CHECK_LAUNCH();
}

// kmin/kmax [pages][P/LP][D] bf16 of a K pool (what kv_append maintains), for page_select.
__global__ void subpage_bounds_kernel(const bf16* k, int64_t pages, int P, int LP, int D, bf16* kmin, bf16* kmax) {
  const int64_t n = pages * (P / LP) * D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = i % D, sp = i / D;  // sp = page * (P/LP) + sub-page
    const bf16* src = k + (sp * LP) * D + d;
    float lo = INFINITY, hi = -INFINITY;
    for (int t = 0; t < LP; ++t) {
      const float x = __bfloat162float(src[static_cast<int64_t>(t) * D]);
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
    }
    kmin[i] = __float2bfloat16(lo);  // exact: min / max of bf16 values
    kmax[i] = __float2bfloat16(hi);
  }
}

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}
double percentile(std::vector<float> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// Times launch(i) (i = rotation index) with events around each call; returns milliseconds per call.
template <class F>
std::vector<float> time_calls(F&& launch, int warmup, int iters, int rotate, cudaStream_t stream) {
  for (int i = 0; i < warmup; ++i) launch(i % rotate);
  CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<cudaEvent_t> ev(2 * static_cast<size_t>(iters));
  for (cudaEvent_t& e : ev) CUDA_CHECK(cudaEventCreate(&e));
  for (int i = 0; i < iters; ++i) {
    CUDA_CHECK(cudaEventRecord(ev[2 * static_cast<size_t>(i)], stream));
    launch(i % rotate);
    CUDA_CHECK(cudaEventRecord(ev[2 * static_cast<size_t>(i) + 1], stream));
  }
  CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<float> ms(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    CUDA_CHECK(cudaEventElapsedTime(&ms[static_cast<size_t>(i)], ev[2 * static_cast<size_t>(i)], ev[2 * static_cast<size_t>(i) + 1]));
  }
  for (cudaEvent_t& e : ev) CUDA_CHECK(cudaEventDestroy(e));
  return ms;
}

int rotation(const Options& o, double set_bytes) {
  if (o.rotate > 0) return o.rotate;
  return static_cast<int>(std::clamp(std::ceil(320e6 / std::max(set_bytes, 1.0)), 1.0, 8.0));
}

struct Lists {  // host CSR page lists
  std::vector<int32_t> indptr{0}, ids, pos0, len;
  void add(int32_t id, int32_t p0, int32_t n) {
    ids.push_back(id);
    pos0.push_back(p0);
    len.push_back(n);
  }
  void close_row() { indptr.push_back(static_cast<int32_t>(ids.size())); }
};

struct DeviceLists {
  DeviceBuffer<int32_t> indptr, ids, pos0, len;
  explicit DeviceLists(const Lists& l)
      : indptr(std::span<const int32_t>(l.indptr)), ids(std::span<const int32_t>(l.ids.empty() ? std::vector<int32_t>{0} : l.ids)),
        pos0(std::span<const int32_t>(l.pos0.empty() ? std::vector<int32_t>{0} : l.pos0)),
        len(std::span<const int32_t>(l.len.empty() ? std::vector<int32_t>{0} : l.len)) {}
  KeyPageList view() const { return {indptr.data(), ids.data(), pos0.data(), len.data()}; }
};

void print_common(const Options& o, int rotate) {
  std::printf("{\"op\": \"%s\", \"seq\": %lld, \"batch\": %d, \"q_heads\": %d, \"kv_heads\": %d, \"dim\": %d, \"page\": %d, "
              "\"streaming_kv_heads\": %d, \"sink\": %d, \"local\": %d, \"rotate\": %d, \"iters\": %d",
              o.op.c_str(), static_cast<long long>(o.seq), o.batch, o.q_heads, o.kv_heads, o.dim, o.page,
              o.streaming_kv_heads, o.sink, o.local, rotate, o.iters);
}

// ---- prefill ------------------------------------------------------------------------------------

int run_prefill(const Options& o) {
  const int64_t L = o.seq, P = o.page, D = o.dim;
  const int group = o.q_heads / o.kv_heads, B = o.batch;
  if (o.chunk < 0 || o.chunk > L) throw std::invalid_argument("--chunk must be within 0 .. --seq");
  const bool chunked = o.chunk > 0;
  const int64_t C = chunked ? o.chunk : L, q0 = L - C;  // queries: positions q0 .. L − 1
  const int64_t T = C * B, nb = (L + P - 1) / P;
  const int retrieval_heads = o.kv_heads - o.streaming_kv_heads;
  const int64_t pages = int64_t{B} * (chunked ? o.kv_heads : retrieval_heads) * nb;
  const double set_bytes = static_cast<double>(pages * P * D * 4 + T * o.q_heads * D * 4 + T * o.kv_heads * D * 4);
  const int R = rotation(o, set_bytes);

  // Rows: retrieval heads read all blocks from pages; streaming heads read the prompt's own K/V.
  const bool xattn = o.xattn_threshold > 0.0;
  std::vector<PrefillRow> rows;
  std::vector<BlockMassRow> mass_rows;
  Lists lists;
  std::vector<int32_t> perm(static_cast<size_t>(pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(1));
  int64_t next = 0;
  double needed_pairs = 0.0;  // (query, key) pairs per query head the mask allows
  // Causal (query, key) pairs of one row: positions q0 .. L − 1 over keys 0 .. t.
  const double causal_pairs = static_cast<double>(L) * static_cast<double>(L + 1) / 2.0 -
                              static_cast<double>(q0) * static_cast<double>(q0 + 1) / 2.0;
  // The row's pages: every page, or for a streaming row (band) those of its sink and of its window
  // before the chunk and the chunk's own, as a ring holds them.
  const auto add_pages = [&](bool band) {
    for (int64_t b = 0; b < nb; ++b) {
      if (band && b * P >= o.sink && (b + 1) * P <= q0 - o.local) continue;
      lists.add(perm[static_cast<size_t>(next++)], static_cast<int32_t>(b * P),
                static_cast<int32_t>(std::min(P, L - b * P)));
    }
  };
  for (int s = 0; s < B; ++s) {
    for (int h = 0; h < o.kv_heads; ++h) {
      PrefillRow r;
      r.q_row0 = static_cast<int32_t>(s * C);
      r.n_tokens = static_cast<int32_t>(C);
      r.q_pos0 = static_cast<int32_t>(q0);
      r.kv_head = h;
      if (h >= retrieval_heads) {
        r.mask = MaskKind::kBand;
        r.sink = o.sink;
        r.local = o.local;
        r.new_kv = chunked ? 0 : 1;
        if (chunked) add_pages(true);
        for (int64_t t = q0; t < L; ++t) {
          const int64_t seen =
              std::min<int64_t>(o.sink, t + 1) + std::min<int64_t>(o.local, std::max<int64_t>(0, t + 1 - o.sink));
          needed_pairs += static_cast<double>(std::min<int64_t>(t + 1, seen));
        }
      } else {
        add_pages(false);
        needed_pairs += causal_pairs;
        if (xattn) {
          r.mask = MaskKind::kBlocks;
          r.block_tokens = o.xattn_block;
          mass_rows.push_back({.q_row0 = r.q_row0, .n_tokens = r.n_tokens, .q_pos0 = r.q_pos0, .kv_head = h,
                               .list_row = static_cast<int32_t>(rows.size()), .block_tokens = o.xattn_block,
                               .stride = o.xattn_stride, .threshold = static_cast<float>(o.xattn_threshold)});
        }
      }
      lists.close_row();
      rows.push_back(r);
    }
  }
  const DeviceLists dl(lists);
  struct Set {
    DeviceBuffer<bf16> k, v, q, o, k_new, v_new;
  };
  std::vector<Set> sets(static_cast<size_t>(R));
  for (int i = 0; i < R; ++i) {
    Set& st = sets[static_cast<size_t>(i)];
    st.k = DeviceBuffer<bf16>(static_cast<size_t>(std::max<int64_t>(pages, 1) * P * D));
    st.v = DeviceBuffer<bf16>(st.k.size());
    st.q = DeviceBuffer<bf16>(static_cast<size_t>(T * o.q_heads * D));
    st.o = DeviceBuffer<bf16>(st.q.size());
    st.k_new = DeviceBuffer<bf16>(static_cast<size_t>(T * o.kv_heads * D));
    st.v_new = DeviceBuffer<bf16>(st.k_new.size());
    fill_uniform(st.k, 10 * i + 1, 1.0f);
    fill_uniform(st.v, 10 * i + 2, 1.0f);
    fill_uniform(st.q, 10 * i + 3, 1.0f);
    fill_uniform(st.k_new, 10 * i + 4, 1.0f);
    fill_uniform(st.v_new, 10 * i + 5, 1.0f);
  }
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  PrefillConfig cfg;
  cfg.head_dim = o.dim;
  cfg.group = group;
  cfg.page_tokens = o.page;
  cfg.kernel = o.kernel == "mma" ? PrefillKernel::kMmaSync : o.kernel == "wgmma" ? PrefillKernel::kWgmma : PrefillKernel::kAuto;
  if (o.min_split_keys >= 0) cfg.min_split_keys = o.min_split_keys;
  cfg.split_ctas = o.split_ctas;
  PrefillAttention attn(cfg);
  XAttentionSelect sel({.head_dim = o.dim, .group = group, .page_tokens = o.page, .max_ctas = o.xattn_max_ctas});
  DeviceBuffer<float> mask_ws;
  DeviceBuffer<uint8_t> allowed;
  if (xattn) {
    sel.plan(mass_rows, stream);
    for (size_t i = 0; i < mass_rows.size(); ++i) {
      PrefillRow& r = rows[static_cast<size_t>(mass_rows[i].list_row)];
      r.block_offset = sel.geometry()[i].offset;
      r.first_qblock = sel.geometry()[i].first_qblock;
      r.n_kblocks = sel.geometry()[i].n_kblocks;
    }
    mask_ws = DeviceBuffer<float>(static_cast<size_t>(sel.workspace_floats()));
    allowed = DeviceBuffer<uint8_t>(static_cast<size_t>(sel.mask_bytes()));
  }
  attn.plan(rows, stream);
  DeviceBuffer<float> split_ws(static_cast<size_t>(std::max<int64_t>(attn.workspace_floats(), 1)));
  const auto estimate = [&](int i) {
    Set& st = sets[static_cast<size_t>(i)];
    XAttentionArgs x;
    x.q = st.q.data();
    x.q_stride = int64_t{o.q_heads} * D;
    x.kv = {st.k.data(), st.v.data(), pages, o.page, o.dim};
    x.pages = dl.view();
    x.scale = 1.0f / std::sqrt(static_cast<float>(D));
    x.workspace = mask_ws.data();
    x.allowed = allowed.data();
    sel.run(x, stream);
  };
  const auto launch = [&](int i) {
    Set& st = sets[static_cast<size_t>(i)];
    if (xattn) estimate(i);
    PrefillArgs a;
    a.q = st.q.data();
    a.q_stride = int64_t{o.q_heads} * D;
    a.o = st.o.data();
    a.o_stride = a.q_stride;
    a.k_new = st.k_new.data();
    a.v_new = st.v_new.data();
    a.kv_new_stride = int64_t{o.kv_heads} * D;
    a.kv = {st.k.data(), st.v.data(), pages, o.page, o.dim};
    a.pages = dl.view();
    a.block_allowed = allowed.data();
    a.scale = 1.0f / std::sqrt(static_cast<float>(D));
    a.workspace = split_ws.data();
    a.workspace_floats = attn.workspace_floats();
    attn.run(a, stream);
  };
  const std::vector<float> ms = time_calls(launch, o.warmup, o.iters, R, stream);
  CUDA_CHECK(cudaDeviceSynchronize());
  const double med = median(ms);
  double xattn_ms = 0.0, density = 1.0;
  if (xattn) {
    // The last call's masks: kept (query block, key block) pairs, and the pairs they let through.
    const std::vector<uint8_t> mask = allowed.download();
    double kept = 0.0, causal = 0.0, masked_pairs = 0.0;
    const double Bt = o.xattn_block;
    for (const BlockMaskGeometry& g : sel.geometry()) {
      for (int32_t qi = 0; qi < g.n_qblocks; ++qi) {
        const int32_t qb = g.first_qblock + qi;
        for (int32_t kb = 0; kb <= qb; ++kb) {
          causal += 1.0;
          if (mask[static_cast<size_t>(g.offset + int64_t{qi} * g.n_kblocks + kb)] == 0) continue;
          kept += 1.0;
          masked_pairs += kb < qb ? Bt * Bt : Bt * (Bt + 1) / 2;
        }
      }
    }
    density = kept / causal;
    needed_pairs -= static_cast<double>(mass_rows.size()) * causal_pairs;
    needed_pairs += masked_pairs;
    xattn_ms = median(time_calls(estimate, o.warmup, o.iters, R, stream));
  }
  const double dense_flops = 4.0 * causal_pairs * static_cast<double>(D) * o.q_heads * B;
  const double needed_flops = 4.0 * needed_pairs * static_cast<double>(D) * group;
  print_common(o, R);
  std::printf(", \"median_ms\": %.5f, \"min_ms\": %.5f, \"p90_ms\": %.5f, \"dense_flops\": %.6e, \"needed_flops\": %.6e, "
              "\"tflops_dense_equiv\": %.2f, \"tflops_needed\": %.2f, \"ctas\": %zu, \"merges\": %zu, \"chunk\": %lld, "
              "\"kernel\": \"%s\"",
              med, percentile(ms, 0.0), percentile(ms, 0.9), dense_flops, needed_flops, dense_flops / (med * 1e-3) / 1e12,
              needed_flops / (med * 1e-3) / 1e12, attn.work().size(), attn.merges().size(),
              static_cast<long long>(o.chunk),
              attn.kernel() == PrefillKernel::kWgmma ? "wgmma" : "mma.sync");
  if (xattn) {
    // The estimate's strided GEMM: per retrieval query head, (L/S)·(L/S + 1)/2 dot products of S·D.
    const double groups = static_cast<double>(L) / o.xattn_stride;
    const double est_flops = 2.0 * groups * (groups + 1) / 2.0 * o.xattn_stride * static_cast<double>(D) *
                             static_cast<double>(mass_rows.size()) * group;
    std::printf(", \"xattn_threshold\": %.3f, \"xattn_block\": %d, \"xattn_stride\": %d, \"xattn_ms\": %.5f, "
                "\"xattn_tflops\": %.2f, \"density\": %.4f",
                o.xattn_threshold, o.xattn_block, o.xattn_stride, xattn_ms, est_flops / (xattn_ms * 1e-3) / 1e12, density);
  }
  std::printf("}\n");
  CUDA_CHECK(cudaStreamDestroy(stream));
  return 0;
}

// ---- decode -------------------------------------------------------------------------------------

int run_decode(const Options& o) {
  const int64_t L = o.seq, P = o.page, D = o.dim;
  const int group = o.q_heads / o.kv_heads, B = o.batch;
  const int retrieval_heads = o.kv_heads - o.streaming_kv_heads;
  const int64_t nb = (L + P - 1) / P, last = nb - 1, t = L - 1;
  const bool select = o.budget > 0 && retrieval_heads > 0;
  const bool gpu_select = select && o.select == "gpu";
  const int n_ret = B * retrieval_heads, n_str = B * o.streaming_kv_heads, n_rows = n_ret + n_str;
  const int64_t sink_pages = (o.sink + P - 1) / P, ring_pages = (o.local + P - 1) / P + 1;
  const int64_t pages = int64_t{n_ret} * nb + int64_t{n_str} * (sink_pages + ring_pages);

  // Rows: retrieval rows first (the selection's CSR is their prefix of the list), then streaming.
  std::vector<DecodeRow> rows;
  // The host uploads the lists (DecodeRow::pages_plan_time), except the retrieval rows' lists that
  // page_select writes on the GPU; not marked in the attention-only graphs either (the steps that
  // reuse a selection), where an engine may update each row's newest entry by a kernel.
  const bool early = o.early != 0;
  for (int s = 0; s < B; ++s) {
    for (int h = 0; h < retrieval_heads; ++h) {
      rows.push_back({s, h, static_cast<int32_t>(t), MaskKind::kCausal, 0, 0, early && !gpu_select});
    }
  }
  for (int s = 0; s < B; ++s) {
    for (int h = retrieval_heads; h < o.kv_heads; ++h) {
      rows.push_back({s, h, static_cast<int32_t>(t), MaskKind::kBand, o.sink, o.local, early});
    }
  }
  std::vector<int32_t> perm(static_cast<size_t>(pages));
  std::iota(perm.begin(), perm.end(), 0);
  if (o.page_order == "shuffled") std::shuffle(perm.begin(), perm.end(), std::mt19937(2));
  if (o.page_order.find(':') != std::string::npos) {  // window:N or extents:N (checked in parse)
    const bool window = o.page_order[0] == 'w';
    const int64_t n = std::stoll(o.page_order.substr(o.page_order.find(':') + 1));
    std::mt19937 g(2);
    if (window) {
      for (int64_t i = 0; i < pages; i += n) std::shuffle(perm.begin() + i, perm.begin() + std::min(pages, i + n), g);
    } else {
      std::vector<int64_t> runs;
      for (int64_t i = 0; i < pages; i += n) runs.push_back(i);
      std::shuffle(runs.begin(), runs.end(), g);
      int64_t k = 0;
      for (const int64_t r0 : runs) {
        for (int64_t i = r0; i < std::min(pages, r0 + n); ++i) perm[static_cast<size_t>(k++)] = static_cast<int32_t>(i);
      }
    }
  }
  std::mt19937 rng(3);
  // All blocks of every retrieval row (what page_select scores), and the list the decode reads.
  Lists all, read;
  int64_t next = 0;
  const PageSelectConfig sel_cfg{o.page, o.logical_page, o.sink, o.budget};
  for (int r = 0; r < n_ret; ++r) {
    std::vector<int32_t> ids(static_cast<size_t>(nb));
    for (int64_t b = 0; b < nb; ++b) {
      ids[static_cast<size_t>(b)] = perm[static_cast<size_t>(next++)];
      all.add(ids[static_cast<size_t>(b)], static_cast<int32_t>(b * P), static_cast<int32_t>(std::min(P, L - b * P)));
    }
    all.close_row();
    if (!select) {
      for (int64_t b = 0; b < nb; ++b) read.add(ids[static_cast<size_t>(b)], static_cast<int32_t>(b * P), static_cast<int32_t>(std::min(P, L - b * P)));
    } else {
      // Host list of the same size as page_select's: sink blocks, the newest, random others.
      const int32_t count = selected_page_count(L, sel_cfg);
      std::vector<int32_t> keep;
      for (int64_t b = 0; b < std::min(sink_pages, nb); ++b) keep.push_back(static_cast<int32_t>(b));
      if (sink_pages < nb) keep.push_back(static_cast<int32_t>(last));
      std::vector<int32_t> rest;
      for (int64_t b = sink_pages; b < last; ++b) rest.push_back(static_cast<int32_t>(b));
      std::shuffle(rest.begin(), rest.end(), rng);
      for (size_t i = 0; static_cast<int32_t>(keep.size()) < count && i < rest.size(); ++i) keep.push_back(rest[i]);
      std::sort(keep.begin(), keep.end());
      for (const int32_t b : keep) read.add(ids[static_cast<size_t>(b)], static_cast<int32_t>(b * P), static_cast<int32_t>(std::min(P, L - b * P)));
    }
    read.close_row();
  }
  for (int r = 0; r < n_str; ++r) {
    const int64_t first = next;
    next += sink_pages + ring_pages;
    for (int64_t b = 0; b < std::min(sink_pages, nb); ++b) {
      read.add(perm[static_cast<size_t>(first + b)], static_cast<int32_t>(b * P), static_cast<int32_t>(std::min(P, L - b * P)));
    }
    for (int64_t b = std::max(sink_pages, last - ring_pages + 1); b <= last; ++b) {
      read.add(perm[static_cast<size_t>(first + sink_pages + (b - sink_pages) % ring_pages)], static_cast<int32_t>(b * P),
               static_cast<int32_t>(std::min(P, L - b * P)));
    }
    read.close_row();
  }
  std::vector<int32_t> row_pages(static_cast<size_t>(n_rows));
  int64_t kv_tokens = 0;
  for (int r = 0; r < n_rows; ++r) {
    row_pages[static_cast<size_t>(r)] = read.indptr[static_cast<size_t>(r) + 1] - read.indptr[static_cast<size_t>(r)];
    for (int32_t e = read.indptr[static_cast<size_t>(r)]; e < read.indptr[static_cast<size_t>(r) + 1]; ++e) kv_tokens += read.len[static_cast<size_t>(e)];
  }
  const double kv_bytes = static_cast<double>(kv_tokens) * static_cast<double>(D) * 2.0 * 2.0;
  const double set_bytes = kv_bytes + static_cast<double>(B) * o.q_heads * D * 4;
  const int R = rotation(o, set_bytes);

  // Per rotation set: pool (+ sub-page bounds), q, o, page lists (one copy: ids differ per set only
  // through the pool base), selection buffers.
  const int SP = o.page / o.logical_page;
  struct Set {
    DeviceBuffer<bf16> k, v, q, o, kmin, kmax;
  };
  std::vector<Set> sets(static_cast<size_t>(R));
  for (int i = 0; i < R; ++i) {
    Set& st = sets[static_cast<size_t>(i)];
    st.k = DeviceBuffer<bf16>(static_cast<size_t>(pages * P * D));
    st.v = DeviceBuffer<bf16>(st.k.size() + static_cast<size_t>(o.v_offset / 2));
    st.q = DeviceBuffer<bf16>(static_cast<size_t>(int64_t{B} * o.q_heads * D));
    st.o = DeviceBuffer<bf16>(st.q.size());
    fill_uniform(st.k, 10 * i + 1, 1.0f);
    fill_uniform(st.v, 10 * i + 2, 1.0f);
    fill_uniform(st.q, 10 * i + 3, 1.0f);
    if (gpu_select) {
      st.kmin = DeviceBuffer<bf16>(static_cast<size_t>(pages * SP * D));
      st.kmax = DeviceBuffer<bf16>(st.kmin.size());
      subpage_bounds_kernel<<<1024, 256>>>(st.k.data(), pages, o.page, o.logical_page, o.dim, st.kmin.data(), st.kmax.data());
      CUDA_CHECK_LAUNCH();
    }
  }
  DeviceLists dread(read);
  const DeviceLists dall(all);
  // Selection buffers (shared by the sets: a replay's selection is consumed by its own decode).
  std::vector<int32_t> seq_lens(static_cast<size_t>(std::max(n_ret, 1)), static_cast<int32_t>(L));
  std::vector<int64_t> q_offset;
  for (int s = 0; s < B; ++s) {
    for (int h = 0; h < retrieval_heads; ++h) q_offset.push_back((int64_t{s} * o.q_heads + int64_t{h} * group) * D);
  }
  if (q_offset.empty()) q_offset.push_back(0);
  const DeviceBuffer<int32_t> d_seq_lens{std::span<const int32_t>(seq_lens)};
  const DeviceBuffer<int64_t> d_q_offset{std::span<const int64_t>(q_offset)};
  DeviceBuffer<float> scores(std::max<size_t>(all.ids.size(), 1));
  const std::vector<uint32_t> zeros(static_cast<size_t>(std::max(n_ret, 1)), 0u);
  DeviceBuffer<uint32_t> row_ready{std::span<const uint32_t>(zeros)};  // page_select's workspace
  const int32_t n_selected = read.indptr[static_cast<size_t>(n_ret)];

  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  DecodeConfig cfg;
  cfg.head_dim = o.dim;
  cfg.group = group;
  cfg.page_tokens = o.page;
  cfg.max_rows = n_rows;
  cfg.cuda_graph = true;
  cfg.programmatic_launch = o.pdl != 0;
  if (o.min_chunk > 0) cfg.min_chunk_tokens = o.min_chunk;
  if (o.target_ctas > 0) cfg.target_ctas = o.target_ctas;
  if (o.cluster > 0) cfg.cluster_ctas = o.cluster;
  DecodeAttention attn(cfg);
  attn.plan(rows, row_pages, stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));

  const auto decode_args = [&](int i) {
    Set& st = sets[static_cast<size_t>(i)];
    DecodeArgs a;
    a.q = st.q.data();
    a.q_stride = int64_t{o.q_heads} * D;
    a.o = st.o.data();
    a.o_stride = a.q_stride;
    a.kv = {st.k.data(), st.v.data() + o.v_offset / 2, pages, o.page, o.dim};
    a.pages = dread.view();
    a.scale = 1.0f / std::sqrt(static_cast<float>(D));
    return a;
  };
  const auto select_call = [&](int i) {
    Set& st = sets[static_cast<size_t>(i)];
    PageSelectArgs s;
    s.config = sel_cfg;
    s.rows = n_ret;
    s.head_dim = o.dim;
    s.group = group;
    s.max_blocks = static_cast<int32_t>(nb);
    s.q = st.q.data();
    s.q_offset = d_q_offset.data();
    s.kmin = st.kmin.data();
    s.kmax = st.kmax.data();
    s.page_indptr = dall.indptr.data();
    s.page_indices = dall.ids.data();
    s.seq_lens = d_seq_lens.data();
    s.scores = scores.data();
    s.row_ready = row_ready.data();
    s.selected_indptr = dread.indptr.data();  // the retrieval rows' prefix of the decode list
    s.selected_pages = dread.ids.data();
    s.selected_pos0 = dread.pos0.data();  // the decode list's positions, written by page_select itself
    s.selected_len = dread.len.data();
    s.programmatic_launch = o.pdl != 0;
    page_select(s, stream);
  };
  // Graphs per set: decode alone, and (gpu selection) selection alone and selection + decode.
  const auto capture = [&](auto&& body) {
    cudaGraph_t g;
    cudaGraphExec_t e;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    body();
    CUDA_CHECK(cudaStreamEndCapture(stream, &g));
    CUDA_CHECK(cudaGraphInstantiate(&e, g, 0));
    CUDA_CHECK(cudaGraphDestroy(g));
    return e;
  };
  // Call j of graph i uses set (i + j) % R, as the layers of a step use their own caches.
  const int N = o.graph_calls;
  const auto calls = [&](int i, auto&& body) {
    for (int j = 0; j < N; ++j) body((i + j) % R);
  };
  const auto decode_call = [&](int i) { attn.run(decode_args(i), stream); };
  const auto both_call = [&](int i) {
    select_call(i);
    decode_call(i);
  };
  std::vector<cudaGraphExec_t> g_decode, g_select, g_both;
  for (int i = 0; i < R; ++i) {
    if (gpu_select) {
      select_call(i);  // fill the lists once so a decode-only replay reads a real selection
      CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    if (o.graph) {
      g_decode.push_back(capture([&] { calls(i, decode_call); }));
      if (gpu_select) {
        g_select.push_back(capture([&] { calls(i, select_call); }));
        g_both.push_back(capture([&] { calls(i, both_call); }));
      }
    }
  }
  // Milliseconds per call.
  const auto timed = [&](std::vector<cudaGraphExec_t>& graphs, auto&& call) {
    std::vector<float> ms = time_calls(
        [&](int i) {
          if (o.graph) {
            CUDA_CHECK(cudaGraphLaunch(graphs[static_cast<size_t>(i)], stream));
          } else {
            calls(i, call);
          }
        },
        o.warmup, o.iters, R, stream);
    for (float& x : ms) x /= static_cast<float>(N);
    return ms;
  };
  const std::vector<float> ms = timed(g_decode, decode_call);
  std::vector<float> ms_ceiling, ms_bulk;
  if (o.read_ceiling) {
    const int32_t entries = read.indptr[static_cast<size_t>(n_rows)];
    int sms = 0, dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    // One wave of `kernel`'s CTAs with this much dynamic shared memory (or --ceiling-ctas, if fewer),
    // at most one per entry.
    const auto one_wave = [&](auto kernel, int threads, int smem) {
      CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      int per_sm = 0;
      CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
      const int wave = per_sm * sms;
      return std::max(1, std::min({wave, entries, o.ceiling_ctas > 0 ? o.ceiling_ctas : wave}));
    };
    // Times `call` as graph replays (one graph per rotation set), as the decode is timed.
    const auto time_replays = [&](const auto& call) {
      std::vector<cudaGraphExec_t> g;
      for (int i = 0; o.graph && i < R; ++i) g.push_back(capture([&] { calls(i, call); }));
      std::vector<float> t = timed(g, call);
      for (cudaGraphExec_t e : g) CUDA_CHECK(cudaGraphExecDestroy(e));
      return t;
    };
    const int smem = kReadStages * 2 * o.page * o.dim * 2;
    const int grid = one_wave(paged_read_kernel, kReadThreads, smem);
    ms_ceiling = time_replays([&](int i) {
      Set& st = sets[static_cast<size_t>(i)];
      paged_read_kernel<<<grid, kReadThreads, smem, stream>>>(st.k.data(), st.v.data() + o.v_offset / 2, dread.ids.data(),
                                                              dread.len.data(), entries, o.page, o.dim);
      CUDA_CHECK_LAUNCH();
    });
    const int bulk_smem = kBulkStages * 2 * o.page * o.dim * 2;
    const int bulk_grid = one_wave(paged_bulk_read_kernel, 32, bulk_smem);
    ms_bulk = time_replays([&](int i) {
      Set& st = sets[static_cast<size_t>(i)];
      paged_bulk_read_kernel<<<bulk_grid, 32, bulk_smem, stream>>>(st.k.data(), st.v.data() + o.v_offset / 2, dread.ids.data(),
                                                                  dread.len.data(), entries, o.page, o.dim);
      CUDA_CHECK_LAUNCH();
    });
  }
  std::vector<float> ms_sel, ms_both;
  if (gpu_select) {
    ms_sel = timed(g_select, select_call);
    ms_both = timed(g_both, both_call);
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  const double med = median(ms);
  print_common(o, R);
  // pdl: the config's flag; programmatic / cluster: how this plan launched (DecodeConfig).
  std::printf(", \"graph_calls\": %d, \"pdl\": %d, \"programmatic\": %d, \"cluster\": %d", N, o.pdl,
              attn.launch_programmatic() ? 1 : 0, attn.launch_cluster());
  std::printf(", \"budget\": %d, \"selection\": \"%s\", \"graph\": %d, \"median_ms\": %.5f, \"min_ms\": %.5f, "
              "\"p90_ms\": %.5f, \"kv_bytes\": %.6e, \"tbps\": %.3f, \"pieces\": %zu, \"selected_pages\": %d",
              o.budget, !select ? "none" : o.select.c_str(), o.graph, med, percentile(ms, 0.0), percentile(ms, 0.9), kv_bytes,
              kv_bytes / (med * 1e-3) / 1e12, attn.split().work.size(), n_selected);
  if (o.read_ceiling) {
    const double c = median(ms_ceiling);
    std::printf(", \"ceiling_median_ms\": %.5f, \"ceiling_tbps\": %.3f", c, kv_bytes / (c * 1e-3) / 1e12);
    const double cb = median(ms_bulk);
    std::printf(", \"bulk_ceiling_median_ms\": %.5f, \"bulk_ceiling_tbps\": %.3f", cb, kv_bytes / (cb * 1e-3) / 1e12);
  }
  if (gpu_select) {
    std::printf(", \"select_median_ms\": %.5f, \"select_decode_median_ms\": %.5f", median(ms_sel), median(ms_both));
  }
  std::printf("}\n");
  for (auto* v : {&g_decode, &g_select, &g_both}) {
    for (cudaGraphExec_t e : *v) CUDA_CHECK(cudaGraphExecDestroy(e));
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    if (cuda_device_count() == 0) {
      std::fprintf(stderr, "attention_bench: no CUDA device\n");
      return 2;
    }
    return o.op == "prefill" ? run_prefill(o) : run_decode(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attention_bench: %s\n", e.what());
    return 1;
  }
}
