#include "engine/cuda/cuda_forward.h"

#include <cuda_bf16.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <limits>
#include <string>
#include <system_error>
#include <unordered_map>

#include "common/errors.h"
#include "common/half.h"
#include "engine/cuda/block_store.h"
#include "engine/cuda/device_step.h"
#include "engine/cuda/step_graphs.h"
#include "engine/cuda/step_tables.h"
#include "engine/cuda/weight_upload.h"
#include "engine/forward_step.h"
#include "engine/page_ranges.h"
#include "engine/rope_freqs.h"
#include "engine/sequence_attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/block_sparse.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_append.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/page_copy.h"
#include "kernels/cuda/page_lists.h"
#include "kernels/cuda/page_select.h"
#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sampling.h"
#include "kvcache/head_roles.h"

namespace sparseserve {

namespace cuda = kernels::cuda;
using bf16 = __nv_bfloat16;
using cuda::DeviceBuffer;

namespace {

// Grows `buf` to at least n elements (contents dropped).
template <class T>
T* sized(DeviceBuffer<T>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf = DeviceBuffer<T>(static_cast<size_t>(n));
  return buf.data();
}

// Rows a GEMM runs on for `rows` rows of activations, rounded up to a bucket (multiples of 8 up to
// 128, of 64 up to 1024, then of 512): a serving engine's step sizes change every step, and each new
// GEMM shape costs a cuBLASLt heuristic query and, the first time, loading its kernels (H200: up to
// tens of milliseconds a step). The rows past `rows` compute on whatever the buffers hold; nothing
// reads their results.
int64_t gemm_rows(int64_t rows) {
  if (rows <= 128) return (rows + 7) / 8 * 8;
  if (rows <= 1024) return (rows + 63) / 64 * 64;
  return (rows + 511) / 512 * 512;
}

}  // namespace

struct CudaForward::Impl {
  struct Layer {
    DeviceBuffer<bf16> attn_norm, w_qkv, b_qkv, wo, ffn_norm, w_gate_up, w_down;
  };
  Impl(const Model& m, const kvcache::KvCacheManager& kv, cudaStream_t s)
      : model(m), manager(kv), own_stream(s == nullptr ? std::make_unique<OwnedStream>() : nullptr),
        stream(own_stream ? own_stream->s : s),
        gemm(cuda::Gemm::kDefaultWorkspaceBytes, cuda::GemmTuning::kHeuristic),
        block_store(static_cast<int32_t>(m.config.n_layers * m.config.n_kv_heads),
                    static_cast<int32_t>((m.config.max_context + kv.config().page_tokens - 1) /
                                         kv.config().page_tokens)) {}

  // A stream of its own when given none: the legacy default stream cannot be captured into a graph.
  struct OwnedStream {
    cudaStream_t s = nullptr;
    OwnedStream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
    ~OwnedStream() { cudaStreamDestroy(s); }
  };
  const Model& model;
  const kvcache::KvCacheManager& manager;
  std::unique_ptr<OwnedStream> own_stream;
  cudaStream_t stream;
  std::vector<Layer> layers;
  DeviceBuffer<bf16> embed, lm_head, final_norm;
  bool tied = false;
  DeviceBuffer<float> inv_freq;
  DeviceBuffer<bf16> k_pool, v_pool, kmin_pool, kmax_pool;
  DeviceBuffer<kernels::cpu::PageRangeCopy> page_copies;  // copy_pages' list
  cuda::Gemm gemm;
  std::vector<std::unique_ptr<cuda::PrefillAttention>> prefill;  // one plan per layer
  std::vector<std::unique_ptr<cuda::DecodeAttention>> decoders;  // one plan per layer, made as needed
  std::vector<std::unique_ptr<cuda::XAttentionSelect>> masks;    // one plan per layer, made as needed
  std::unordered_map<uint64_t, SequenceAttention> seqs;  // the bound sequences
  // Their retrieval block tables on the device (kernels/cpu/page_lists.h): where each lives and
  // what is there (host), the store itself, the pairs of a step's appends; the step's lists.
  BlockStore block_store;
  DeviceBuffer<int32_t> store, store_pairs, lists;
  StepTables step_tables;  // rebuilt every step in place (its capacity kept)
  SelectionStats stats;
  // Step buffers, grown as needed: activations [rows][width] bf16, the step's int32 tables, the
  // selection's int64 query offsets, scores and selected blocks, and its row counters (zero between
  // calls).
  DeviceBuffer<bf16> h, xn, qkv, att, proj, gate_up, act, sel, logits;
  DeviceBuffer<float> logits_f32;
  cuda::PinnedBuffer<float> staged;  // the logits rows the host reads
  DeviceBuffer<cuda::SamplingRow> draw_params;
  DeviceBuffer<int32_t> draw_tokens;
  DeviceBuffer<int32_t> tables, picked;
  // SPARSESERVE_STEP_TIMES=1: each step logs where its time went (host tables, attention, the rest).
  bool trace = std::getenv("SPARSESERVE_STEP_TIMES") != nullptr;
  // SPARSESERVE_DECODE_WITH_PREFILL=1: one-token rows go to the prefill kernel too (A/B measurements).
  bool decode_with_prefill = std::getenv("SPARSESERVE_DECODE_WITH_PREFILL") != nullptr;
  std::vector<cuda::CudaEvent> marks;  // [0] start, then per layer {before, after} the attention, then the end
  DeviceBuffer<int64_t> q_offsets;
  DeviceBuffer<float> scores;
  DeviceBuffer<uint32_t> row_ready;
  DeviceBuffer<float> mask_workspace;
  DeviceBuffer<uint8_t> block_allowed;
  DeviceBuffer<float> split_workspace;  // the prefill's key-split partials, shared by the layers
  // Decode steps (no prefill rows) run from CUDA graphs unless SPARSESERVE_CUDA_GRAPHS=0 (A/B
  // measurements). The decode attention then launches capacity-sized grids (DecodeConfig::cuda_graph).
  bool use_graphs = [] {
    const char* v = std::getenv("SPARSESERVE_CUDA_GRAPHS");
    return v == nullptr || std::string(v) != "0";
  }();
  StepGraphs graphs;

  // Layer l's decode attention, with room for `rows` rows (remade larger when a step needs more).
  cuda::DecodeAttention& decoder(int64_t l, int32_t rows) {
    auto& d = decoders[static_cast<size_t>(l)];
    if (!d || d->config().max_rows < rows) {
      const ModelConfig& c = model.config;
      cuda::DecodeConfig dc;
      dc.head_dim = static_cast<int32_t>(c.head_dim);
      dc.group = static_cast<int32_t>(c.n_heads / c.n_kv_heads);
      dc.page_tokens = manager.config().page_tokens;
      dc.max_rows = std::max({rows, d ? 2 * d->config().max_rows : 0, 64});
      dc.cuda_graph = use_graphs;
      d = std::make_unique<cuda::DecodeAttention>(dc);
      graphs.clear();  // graphs may hold the old plan's buffers; a key holds only its address
    }
    return *d;
  }

  SequenceAttention& seq(uint64_t id) {
    const auto it = seqs.find(id);
    if (it == seqs.end()) throw InternalError("CudaForward: sequence " + std::to_string(id) + " is not bound");
    return it->second;
  }
  void run(std::span<const ForwardSeq> batch, std::span<const DeviceDraw> draws, std::vector<float>& out,
           std::vector<int32_t>& drawn);
  // Appends the batch's new blocks to the device store (grown, its contents kept, when a sequence
  // takes a new region) on `stream`.
  void sync_store(std::span<const ForwardSeq> batch);
  // Replaces the store by one of `entries` (more than it holds) with its contents; synchronises.
  void grow_store(int64_t entries);
  // The step's device work on `stream`, from the embedding gather to the drawn tokens: launches
  // only (no allocation, upload or sync), reading nothing that changes between steps but `s` and the
  // device tables it points to. marks: record the trace's per-layer attention events.
  void enqueue(const DeviceStep& s, bool marks);
  // y = x · Wᵀ (+ bias) on gemm_rows(M) rows.
  void gemm_run(const bf16* x, const DeviceBuffer<bf16>& w, bf16* y, int64_t M, int64_t N, int64_t K,
                const bf16* bias = nullptr) {
    cuda::GemmArgs g;
    g.x = x;
    g.w = w.data();
    g.y = y;
    g.bias = bias;
    g.M = gemm_rows(M), g.N = N, g.K = K;
    gemm.run(g, stream);
  }
};

CudaForward::CudaForward(const Model& model, const kvcache::KvCacheManager& manager, cudaStream_t stream)
    : impl_(std::make_unique<Impl>(model, manager, stream)) {
  const ModelConfig& c = model.config;
  const ModelWeights& w = model.weights;
  check(c.head_dim == 64 || c.head_dim == 128, "CudaForward: head_dim must be 64 or 128");
  check(c.n_heads % c.n_kv_heads == 0, "CudaForward: query heads must be a multiple of KV heads");
  Impl& m = *impl_;
  for (const LayerWeights& lw : w.layers) {
    Impl::Layer l;
    l.attn_norm = upload_vectors({&lw.attn_norm});
    l.w_qkv = upload_rows({&lw.wq, &lw.wk, &lw.wv});
    l.b_qkv = upload_vectors({&lw.bq, &lw.bk, &lw.bv});
    l.wo = upload_rows({&lw.wo});
    l.ffn_norm = upload_vectors({&lw.ffn_norm});
    l.w_gate_up = upload_rows({&lw.w_gate, &lw.w_up});
    l.w_down = upload_rows({&lw.w_down});
    m.layers.push_back(std::move(l));
  }
  m.embed = upload_rows({&w.embed});
  m.tied = w.lm_head.data == w.embed.data && w.lm_head.type == w.embed.type;
  if (!m.tied) m.lm_head = upload_rows({&w.lm_head});
  m.final_norm = upload_vectors({&w.final_norm});
  m.inv_freq = DeviceBuffer<float>(std::span<const float>(rope_inv_freq(c, w.rope_freq_factors)));
  const auto pages = static_cast<size_t>(std::max<int32_t>(manager.num_pages(), 1));
  const int32_t P = manager.config().page_tokens, LP = manager.config().logical_page_tokens;
  const auto D = static_cast<size_t>(c.head_dim);
  m.k_pool = DeviceBuffer<bf16>(pages * static_cast<size_t>(P) * D);
  m.v_pool = DeviceBuffer<bf16>(pages * static_cast<size_t>(P) * D);
  m.kmin_pool = DeviceBuffer<bf16>(pages * static_cast<size_t>(P / LP) * D);
  m.kmax_pool = DeviceBuffer<bf16>(pages * static_cast<size_t>(P / LP) * D);
  for (auto* b : {&m.k_pool, &m.v_pool, &m.kmin_pool, &m.kmax_pool}) b->fill_bytes(0, m.stream);  // every slot finite
  cuda::PrefillConfig pc;
  pc.head_dim = static_cast<int32_t>(c.head_dim);
  pc.group = static_cast<int32_t>(c.n_heads / c.n_kv_heads);
  pc.page_tokens = P;
  // SPARSESERVE_PREFILL_SPLIT=N: the prefill key split's min_split_keys (0: no split; A/B
  // measurements and tests); unset or not a number: the kernel's default.
  if (const char* v = std::getenv("SPARSESERVE_PREFILL_SPLIT")) {
    int32_t keys = 0;
    const char* end = v + std::strlen(v);
    if (auto [ptr, ec] = std::from_chars(v, end, keys); ec == std::errc() && ptr == end && keys >= 0) {
      pc.min_split_keys = keys;
    }
  }
  for (int64_t l = 0; l < c.n_layers; ++l) m.prefill.push_back(std::make_unique<cuda::PrefillAttention>(pc));
  m.decoders.resize(static_cast<size_t>(c.n_layers));
  m.masks.resize(static_cast<size_t>(c.n_layers));
  // The weights' copies from pageable memory may return before their last transfer lands, on the
  // default stream, which the step's stream (non-blocking) does not wait for: all of it is done here.
  CUDA_CHECK(cudaDeviceSynchronize());
}

CudaForward::~CudaForward() = default;

void CudaForward::warm_up(int64_t max_rows, int64_t max_logit_rows) {
  Impl& m = *impl_;
  const ModelConfig& c = m.model.config;
  const int64_t H = c.hidden, D = c.head_dim, I = c.intermediate, V = c.vocab_size;
  const int64_t q_dim = c.n_heads * D, qkv_w = q_dim + 2 * c.n_kv_heads * D;
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t top = gemm_rows(std::max<int64_t>(max_rows, 1));
  const int64_t top_logits = gemm_rows(std::max<int64_t>(max_logit_rows, 1));
  bf16* xp = sized(m.xn, top * H);
  bf16* qp = sized(m.qkv, top * qkv_w);
  bf16* ap = sized(m.att, top * q_dim);
  bf16* pp = sized(m.proj, top * H);
  bf16* gp = sized(m.gate_up, top * 2 * I);
  bf16* cp = sized(m.act, top * I);
  sized(m.h, top * H);
  bf16* sp = sized(m.sel, top_logits * H);
  bf16* lp = sized(m.logits, top_logits * V);
  sized(m.logits_f32, top_logits * V);
  // Nothing reads these results; the inputs are zeroed so that they are finite numbers.
  for (auto* b : {&m.xn, &m.att, &m.act, &m.sel}) b->fill_bytes(0, m.stream);
  const Impl::Layer& l0 = m.layers.front();
  int shapes = 0;
  for (int64_t rows = 1; rows <= top; rows = gemm_rows(rows) + 1) {
    const int64_t M = gemm_rows(rows);
    m.gemm_run(xp, l0.w_qkv, qp, M, qkv_w, H, l0.b_qkv.size() > 0 ? l0.b_qkv.data() : nullptr);
    m.gemm_run(ap, l0.wo, pp, M, H, q_dim);
    m.gemm_run(xp, l0.w_gate_up, gp, M, 2 * I, H);
    m.gemm_run(cp, l0.w_down, pp, M, H, I);
    shapes += 4;
    if (M <= top_logits) {
      m.gemm_run(sp, m.tied ? m.embed : m.lm_head, lp, M, V, H);
      ++shapes;
    }
  }
  const int32_t decode_rows = static_cast<int32_t>(std::max<int64_t>(max_logit_rows, 1) * c.n_kv_heads);
  for (int64_t l = 0; l < c.n_layers; ++l) m.decoder(l, decode_rows);
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  spdlog::info("CUDA forward: {} GEMM shapes ready for steps of up to {} tokens and {} logits rows in {:.2f} s", shapes,
               max_rows, max_logit_rows, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

void CudaForward::reserve_sequences(int64_t n) {
  Impl& m = *impl_;
  const int64_t entries = std::max<int64_t>(n, 1) * m.block_store.region_size();
  if (entries > std::numeric_limits<int32_t>::max()) {
    throw InvalidArgument(fmt::format(
        "max_num_seqs {}: the block tables of {} sequences of up to {} tokens take {} entries, past the 2^31 a "
        "step's int32 tables address; lower max_num_seqs or the model's context",
        n, n, m.model.config.max_context, entries));
  }
  if (static_cast<int64_t>(m.store.size()) < entries) m.grow_store(entries);
}

void CudaForward::add_sequence(uint64_t id, const kvcache::SparsityProfile& profile, int64_t stored) {
  Impl& m = *impl_;
  const ModelConfig& c = m.model.config;
  check(m.manager.has_sequence(id), "CudaForward: sequence not registered with the KV cache manager");
  check(!m.seqs.contains(id), "CudaForward: sequence already bound");
  check(profile.roles.n_layers() == c.n_layers && profile.roles.n_kv_heads() == c.n_kv_heads,
        "CudaForward: profile head roles do not match the model");
  const kvcache::SequenceKv& kv = m.manager.sequence(id);
  check(kv.retrieval_slots() == profile.roles.slots(kvcache::HeadRole::kRetrieval) &&
            kv.streaming_slots() == profile.roles.slots(kvcache::HeadRole::kStreaming),
        "CudaForward: the sequence's layout is not its profile's");
  check(stored >= 0 && stored <= kv.length() && stored % m.manager.config().page_tokens == 0,
        "CudaForward: stored tokens beyond the sequence's pages or inside a page");
  m.block_store.bind(id);
  m.seqs.emplace(id, SequenceAttention(profile, c.n_layers, c.n_kv_heads, stored));
}

void CudaForward::release(uint64_t id) {
  impl_->seqs.erase(id);
  impl_->block_store.unbind(id);
}

void CudaForward::copy_pages(std::span<const kvcache::PageCopy> copies) {
  Impl& m = *impl_;
  if (copies.empty()) return;
  const int32_t P = m.manager.config().page_tokens;
  const std::vector<kernels::cpu::PageRangeCopy> ranges = page_ranges(copies, m.manager.num_pages(), P, "CudaForward");
  // The upload reads pageable memory: staged before cudaMemcpyAsync returns. The buffer is reused by
  // the next call's upload, which the stream orders after this launch.
  sized(m.page_copies, static_cast<int64_t>(ranges.size()));
  m.page_copies.upload(ranges, m.stream);
  kernels::cuda::copy_page_ranges(m.k_pool.data(), m.v_pool.data(), P, m.model.config.head_dim, m.page_copies.data(),
                                  static_cast<int32_t>(ranges.size()), m.stream);
}

const SelectionStats& CudaForward::selection_stats() const { return impl_->stats; }

const StepGraphStats& CudaForward::graph_stats() const { return impl_->graphs.stats(); }

void CudaForward::forward(std::span<const ForwardSeq> batch, std::span<const DeviceDraw> draws,
                          std::vector<float>& logits, std::vector<int32_t>& drawn) {
  impl_->run(batch, draws, logits, drawn);
}

void CudaForward::Impl::run(std::span<const ForwardSeq> batch, std::span<const DeviceDraw> draws,
                            std::vector<float>& out, std::vector<int32_t>& drawn) {
  const ModelConfig& c = model.config;
  const int64_t H = c.hidden, D = c.head_dim, L = c.n_layers, KV = c.n_kv_heads, I = c.intermediate, V = c.vocab_size;
  const int64_t q_dim = c.n_heads * D, kv_dim = KV * D, qkv_w = q_dim + 2 * kv_dim;
  const int32_t P = manager.config().page_tokens;

  // Checks first: nothing is written for a bad batch.
  const auto [rows, out_rows] = check_step(c, batch);
  for (size_t i = 0; i < batch.size(); ++i) {
    const ForwardSeq& s = batch[i];
    check(seq(s.id).length() == s.start, "CudaForward: step start differs from the stored length");
    check(manager.sequence(s.id).length() >= s.start + static_cast<int64_t>(s.tokens.size()),
          "CudaForward: KV pages for the step were not allocated");
    for (size_t j = 0; j < i; ++j) check(batch[j].id != s.id, "CudaForward: sequence twice in one step");
  }
  for (size_t i = 0; i < draws.size(); ++i) {
    check(draws[i].row >= 0 && draws[i].row < out_rows && (i == 0 || draws[i].row > draws[i - 1].row),
          "CudaForward: draws must name distinct logits rows in ascending order");
  }
  out.resize(static_cast<size_t>(out_rows * V));
  drawn.assign(draws.size(), 0);
  if (rows == 0) return;

  const auto host_t0 = std::chrono::steady_clock::now();
  // ---- The block store takes the step's new blocks (before the step's device work, outside its
  // graph), then the host tables (engine/cuda/step_tables.h) ----
  sync_store(batch);
  StepTables& tab = step_tables;
  build_step_tables(c, manager, block_store, seqs, batch, draws, rows, out_rows, decode_with_prefill, tab);
  stats.context_tokens += tab.context_tokens;
  stats.selected_tokens += tab.selected_tokens;
  std::vector<LayerPlan>& plans = tab.plans;
  // ---- Device buffers sized, tables uploaded, attention planned (all before the device work, which
  // then allocates and uploads nothing: it may be captured in a CUDA graph) ----
  const double tables_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host_t0).count();
  const int64_t n_drawn = static_cast<int64_t>(draws.size()), n_host = out_rows - n_drawn;
  // Rows copied back: the host's, then, when a draw keeps its row, the drawn ones too (they follow
  // the host's in logits_f32).
  const bool keep_drawn = std::any_of(draws.begin(), draws.end(), [](const DeviceDraw& d) { return d.keep_row; });
  const int64_t n_copied = keep_drawn ? out_rows : n_host;
  DeviceStep step;
  step.rows = rows;
  step.out_rows = out_rows;
  step.n_host = n_host;
  step.n_drawn = n_drawn;
  step.ids = tab.ids, step.pos = tab.pos, step.off = tab.off, step.selr = tab.selr;
  step.max_blocks = std::bit_ceil(static_cast<uint32_t>(tab.max_blocks));  // ≥ every lane's blocks
  step.t = sized(tables, static_cast<int64_t>(tab.blob.data.size()));
  tables.upload(tab.blob.data, stream);
  step.lists = sized(lists, static_cast<int64_t>(tab.lists.size));
  step.store = store.data();
  step.runs = tab.runs;
  step.n_runs = tab.n_runs;
  if (!tab.step_q.empty()) {
    sized(q_offsets, static_cast<int64_t>(tab.step_q.size()));
    q_offsets.upload(tab.step_q, stream);
    sized(picked, tab.picked_total);
    int64_t most_rows = 0, most_entries = 0;
    for (const LayerPlan& lp : plans) {
      most_rows = std::max<int64_t>(most_rows, static_cast<int64_t>(lp.sel_owner.size()));
      most_entries = std::max<int64_t>(most_entries, lp.sel_indptr.back());
    }
    sized(scores, most_entries);
    if (static_cast<int64_t>(row_ready.size()) < most_rows) {
      row_ready = DeviceBuffer<uint32_t>(static_cast<size_t>(most_rows));
      row_ready.fill_bytes(0, stream);  // page_select's contract: zero before the first call
    }
  }
  bool any_prefill = false;
  int64_t mask_floats = 0, mask_bytes = 0;  // the most any layer's dynamic masks take
  int64_t split_floats = 0;                  // the most any layer's prefill key split takes
  step.layers.resize(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    LayerPlan& lp = plans[static_cast<size_t>(l)];
    LayerLaunch& ll = step.layers[static_cast<size_t>(l)];
    if (!lp.mass_rows.empty()) {  // dynamic block masks first: their geometry goes into the prefill rows
      // As for the prefill and decode plans below: a layer whose mass rows equal an earlier layer's
      // runs on that layer's mask plan (a plan depends on its rows alone; each run writes its own
      // layer's masks from its own queries and keys).
      for (int64_t j = 0; j < l && ll.masks == nullptr; ++j) {
        const LayerLaunch& planned = step.layers[static_cast<size_t>(j)];
        if (planned.masks == masks[static_cast<size_t>(j)].get() &&
            plans[static_cast<size_t>(j)].mass_rows == lp.mass_rows) {
          ll.masks = planned.masks;
        }
      }
      if (ll.masks == nullptr) {
        auto& x = masks[static_cast<size_t>(l)];
        if (!x) {
          x = std::make_unique<cuda::XAttentionSelect>(cuda::XAttentionConfig{
              .head_dim = static_cast<int32_t>(D), .group = static_cast<int32_t>(c.n_heads / KV), .page_tokens = P});
        }
        x->plan(lp.mass_rows, stream);
        mask_floats = std::max(mask_floats, x->workspace_floats());
        mask_bytes = std::max(mask_bytes, x->mask_bytes());
        ll.masks = x.get();
      }
      for (size_t i = 0; i < lp.mass_rows.size(); ++i) {
        const cuda::BlockMaskGeometry& g = ll.masks->geometry()[i];
        cuda::PrefillRow& pr = lp.prefill_rows[static_cast<size_t>(lp.mass_rows[i].list_row)];
        pr.block_offset = g.offset;
        pr.first_qblock = g.first_qblock;
        pr.n_kblocks = g.n_kblocks;
      }
    }
    if (!lp.prefill_rows.empty()) {
      // As for decode below: a layer whose prefill rows equal an earlier layer's (mask geometry
      // included) runs on that layer's plan; under a dense profile every layer shares layer 0's.
      for (int64_t j = 0; j < l && ll.prefill == nullptr; ++j) {
        const LayerLaunch& planned = step.layers[static_cast<size_t>(j)];
        if (planned.prefill == prefill[static_cast<size_t>(j)].get() &&
            plans[static_cast<size_t>(j)].prefill_rows == lp.prefill_rows) {
          ll.prefill = planned.prefill;
        }
      }
      if (ll.prefill == nullptr) {
        prefill[static_cast<size_t>(l)]->plan(lp.prefill_rows, stream);
        ll.prefill = prefill[static_cast<size_t>(l)].get();
        split_floats = std::max(split_floats, ll.prefill->workspace_floats());
      }
      any_prefill = true;
    }
    if (!lp.decode_rows.empty()) {
      // A layer whose rows and entry counts equal an earlier layer's runs on that layer's plan (a
      // plan is read only by its runs; under a dense profile every layer shares layer 0's).
      for (int64_t j = 0; j < l && ll.decode == nullptr; ++j) {
        const LayerPlan& other = plans[static_cast<size_t>(j)];
        const LayerLaunch& planned = step.layers[static_cast<size_t>(j)];
        if (planned.decode == decoders[static_cast<size_t>(j)].get() && other.decode_rows == lp.decode_rows &&
            other.decode_entries == lp.decode_entries) {
          ll.decode = planned.decode;
        }
      }
      if (ll.decode == nullptr) {
        cuda::DecodeAttention& d = decoder(l, static_cast<int32_t>(lp.decode_rows.size()));
        d.plan(lp.decode_rows, lp.decode_entries, stream);
        ll.decode = &d;
      }
    }
    ll.prefill_keys = {lp.prefill_keys.ip, lp.prefill_keys.pg, lp.prefill_keys.p0, lp.prefill_keys.ln};
    ll.decode_keys = {lp.decode_keys.ip, lp.decode_keys.pg, lp.decode_keys.p0, lp.decode_keys.ln};
    ll.retrieval_before = lp.retrieval_before;
    ll.streaming_before = lp.streaming_before;
    ll.streaming_after = lp.streaming_after;
    ll.app_r = lp.app_r, ll.app_sb = lp.app_sb, ll.app_s = lp.app_s;
    if (lp.sel_owner.empty()) continue;
    ll.sel = {lp.s_ip, lp.s_pg, lp.s_len, lp.s_out, lp.q_at, lp.picked_at,
              static_cast<size_t>(lp.decode_keys.indptr[lp.fresh_from])};
    // The fresh rows of a layer may come from profiles of different budgets; page_select takes one
    // geometry and at most kPageSelectMaxRows rows a call: one call per run of rows sharing
    // sink_tokens and token_budget, split where longer.
    const auto& owner = lp.sel_owner;
    for (size_t a = 0; a < owner.size();) {
      const kvcache::DecodeSelection& d = seq(owner[a].first).profile().decode;
      size_t b = a + 1;
      while (b < owner.size() && b - a < static_cast<size_t>(cuda::kPageSelectMaxRows)) {
        const kvcache::DecodeSelection& e = seq(owner[b].first).profile().decode;
        if (e.sink_tokens != d.sink_tokens || e.token_budget != d.token_budget) break;
        ++b;
      }
      ll.select_runs.push_back({static_cast<int64_t>(a), static_cast<int64_t>(b - a), d.sink_tokens, d.token_budget});
      a = b;
    }
  }
  const int64_t padded = gemm_rows(rows);
  step.h = sized(h, padded * H);
  step.xn = sized(xn, padded * H);
  step.qkv = sized(qkv, padded * qkv_w);
  step.att = sized(att, padded * q_dim);
  step.proj = sized(proj, padded * H);
  step.gate_up = sized(gate_up, padded * 2 * I);
  step.act = sized(act, padded * I);
  if (out_rows > 0) {
    step.sel = sized(sel, gemm_rows(out_rows) * H);
    step.logits = sized(logits, gemm_rows(out_rows) * V);
    step.logits_f32 = sized(logits_f32, out_rows * V);
    if (n_copied > 0 && static_cast<int64_t>(staged.size()) < n_copied * V) {
      staged = cuda::PinnedBuffer<float>(static_cast<size_t>(n_copied * V));
    }
    if (n_drawn > 0) {
      std::vector<cuda::SamplingRow> params(draws.size());
      for (size_t i = 0; i < draws.size(); ++i) {
        const DeviceDraw& d = draws[i];
        params[i] = cuda::SamplingRow{d.temperature, d.top_k, d.top_p, d.min_p, d.seed, d.step};
      }
      sized(draw_params, n_drawn);
      draw_params.upload(params, stream);
      step.draw_params = draw_params.data();
      step.draw_tokens = sized(draw_tokens, n_drawn);
    }
  }
  step.q_offsets = q_offsets.data();
  step.picked = picked.data();
  step.scores = scores.data();
  step.row_ready = row_ready.data();
  if (mask_floats > 0) {
    if (static_cast<int64_t>(mask_workspace.size()) < mask_floats) {
      spdlog::info("CUDA forward: dynamic prefill sparsity's workspace grows to {:.1f} MiB",
                   static_cast<double>(mask_floats) * 4 / (1 << 20));
    }
    step.mask_workspace = sized(mask_workspace, mask_floats);
    step.block_allowed = sized(block_allowed, mask_bytes);
  }
  if (split_floats > 0) {
    step.split_workspace = sized(split_workspace, split_floats);
    step.split_floats = split_floats;
  }
  const double host_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host_t0).count();

  // ---- Device work: from a CUDA graph for decode steps (StepGraphs), else launched here ----
  const bool graph = use_graphs && !any_prefill;
  if (trace) {
    while (marks.size() < static_cast<size_t>(2 * L + 2)) marks.emplace_back(cudaEventDefault);
    CUDA_CHECK(cudaEventRecord(marks[0].get(), stream));
  }
  if (graph) {
    std::vector<int64_t> shape, key;
    step.describe(shape, key);
    graphs.run(shape, key, stream, [&] { enqueue(step, false); });
  } else {
    enqueue(step, trace);
  }
  if (n_copied > 0) {
    CUDA_CHECK(cudaMemcpyAsync(staged.data(), step.logits_f32, static_cast<size_t>(n_copied * V) * sizeof(float),
                               cudaMemcpyDeviceToHost, stream));
  }
  if (n_drawn > 0) {
    CUDA_CHECK(cudaMemcpyAsync(drawn.data(), step.draw_tokens, drawn.size() * sizeof(int32_t), cudaMemcpyDeviceToHost,
                               stream));
  }
  std::vector<int32_t> chosen(static_cast<size_t>(tab.picked_total));
  if (tab.picked_total > 0) {
    CUDA_CHECK(cudaMemcpyAsync(chosen.data(), picked.data(), chosen.size() * sizeof(int32_t), cudaMemcpyDeviceToHost,
                               stream));
  }
  if (trace) CUDA_CHECK(cudaEventRecord(marks[static_cast<size_t>(2 * L + 1)].get(), stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  if (trace) {
    const auto ms = [&](size_t a, size_t b) {
      float t = 0;
      CUDA_CHECK(cudaEventElapsedTime(&t, marks[a].get(), marks[b].get()));
      return static_cast<double>(t);
    };
    double attention = 0;
    if (!graph) {
      for (int64_t l = 0; l < L; ++l) attention += ms(static_cast<size_t>(1 + 2 * l), static_cast<size_t>(2 + 2 * l));
    }
    const StepGraphStats& g = graphs.stats();
    spdlog::info("step: {} rows ({} sequences), host {:.3f} ms (tables {:.3f}), device {:.3f} ms ({})", rows,
                 batch.size(), host_ms, tables_ms, ms(0, static_cast<size_t>(2 * L + 1)),
                 graph ? fmt::format("CUDA graph; so far {} replays, {} updates, {} captures", g.replays, g.updates,
                                     g.instantiations)
                       : fmt::format("attention {:.3f} ms", attention));
  }
  {  // the host's rows back to their places in batch order, and the drawn rows kept
    size_t k = 0;
    int64_t h_row = 0;
    for (int64_t j = 0; j < out_rows; ++j) {
      if (k < draws.size() && draws[k].row == j) {
        if (draws[k].keep_row) std::copy_n(staged.data() + (n_host + static_cast<int64_t>(k)) * V, V, out.data() + j * V);
        ++k;
        continue;
      }
      std::copy_n(staged.data() + h_row++ * V, V, out.data() + j * V);
    }
  }

  // ---- The step is stored: selections, lengths, decode steps ----
  for (int64_t l = 0; l < L; ++l) {
    const LayerPlan& lp = plans[static_cast<size_t>(l)];
    for (size_t k = 0; k < lp.sel_owner.size(); ++k) {
      const auto [id, hd] = lp.sel_owner[k];
      const auto* first = chosen.data() + lp.picked_at + static_cast<size_t>(lp.sel_out_indptr[k]);
      std::vector<int32_t> blocks(first, first + (lp.sel_out_indptr[k + 1] - lp.sel_out_indptr[k]));
      const int64_t end = lp.sel_lens[k];
      for (int32_t b : blocks) stats.selected_tokens += std::min<int64_t>(P, end - int64_t{b} * P);
      stats.selections += 1;
      seq(id).record_selection(l, hd, std::move(blocks), end, P);
    }
  }
  for (const ForwardSeq& s : batch) seq(s.id).end_step(s);
}

void CudaForward::Impl::grow_store(int64_t entries) {
  DeviceBuffer<int32_t> grown(static_cast<size_t>(entries));
  if (store.size() > 0) {
    CUDA_CHECK(cudaMemcpyAsync(grown.data(), store.data(), store.bytes(), cudaMemcpyDeviceToDevice, stream));
  }
  CUDA_CHECK(cudaStreamSynchronize(stream));  // the copy has read the old store before it is freed
  store = std::move(grown);
}

void CudaForward::Impl::sync_store(std::span<const ForwardSeq> batch) {
  std::vector<int32_t> pairs;
  for (const ForwardSeq& s : batch) block_store.pending(s.id, manager.sequence(s.id), pairs);
  if (static_cast<int64_t>(store.size()) < block_store.size()) {
    grow_store(std::max<int64_t>(block_store.size(), 2 * static_cast<int64_t>(store.size())));
  }
  if (!pairs.empty()) {
    sized(store_pairs, static_cast<int64_t>(pairs.size()));
    store_pairs.upload(pairs, stream);
    cuda::scatter_pairs(store_pairs.data(), static_cast<int32_t>(pairs.size() / 2), store.data(), stream);
  }
  // Counted only now: a throw above leaves the blocks to be sent by the next step.
  for (const ForwardSeq& s : batch) block_store.stored(s.id, manager.sequence(s.id));
}

void CudaForward::Impl::enqueue(const DeviceStep& s, bool with_marks) {
  const ModelConfig& c = model.config;
  const int64_t H = c.hidden, D = c.head_dim, L = c.n_layers, KV = c.n_kv_heads, I = c.intermediate, V = c.vocab_size;
  const int64_t group = c.n_heads / KV;
  const int64_t q_dim = c.n_heads * D, kv_dim = KV * D, qkv_w = q_dim + 2 * kv_dim;
  const int32_t P = manager.config().page_tokens, LP = manager.config().logical_page_tokens;
  const int64_t rows = s.rows;
  int32_t* const t = s.t;
  const bool interleaved = c.rope_layout == RopeLayout::kInterleaved;
  const cuda::PagedKvPool pool{k_pool.data(), v_pool.data(), manager.num_pages(), P, static_cast<int32_t>(D)};
  cuda::KvPoolView with_bounds;  // retrieval lanes: K/V and the sub-page bounds
  with_bounds.k = k_pool.data();
  with_bounds.v = v_pool.data();
  with_bounds.kmin = kmin_pool.data();
  with_bounds.kmax = kmax_pool.data();
  with_bounds.num_pages = manager.num_pages();
  with_bounds.page_tokens = P;
  with_bounds.logical_page_tokens = LP;
  with_bounds.head_dim = static_cast<int32_t>(D);
  cuda::KvPoolView no_bounds = with_bounds;  // streaming lanes keep no bounds
  no_bounds.kmin = no_bounds.kmax = nullptr;
  const auto append = [&](const cuda::KvPoolView& view, size_t table) {  // all KV heads at once
    cuda::KvAppendRows a;
    a.k_new = s.qkv + q_dim;
    a.v_new = s.qkv + q_dim + kv_dim;
    a.k_stride = a.v_stride = qkv_w;
    a.page_ids = t + table;  // [KV][rows]
    a.offsets = t + s.off;
    a.rows = rows;
    a.heads = static_cast<int32_t>(KV);
    cuda::kv_append(view, a, stream);
  };
  const auto mark = [&](size_t i) {
    if (with_marks) CUDA_CHECK(cudaEventRecord(marks[i].get(), stream));
  };
  int32_t* const lists = s.lists;
  const auto on_device = [&](const ListOffsets& k) {
    return cuda::KeyPageList{t + k.ip, lists + k.pg, lists + k.p0, lists + k.ln};
  };
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  // The step's lists from the block store and the staged entries: a plain launch, so every later
  // kernel may read them as plan-time data.
  cuda::expand_key_runs(reinterpret_cast<const cuda::KeyRun*>(t + s.runs), s.n_runs, s.store, t, P, lists, stream);
  cuda::embedding_gather(embed.data(), V, H, t + s.ids, rows, s.h, stream);
  for (int64_t l = 0; l < L; ++l) {
    const Layer& lw = layers[static_cast<size_t>(l)];
    const LayerLaunch& ll = s.layers[static_cast<size_t>(l)];
    if (l == 0) {
      cuda::rmsnorm(s.h, lw.attn_norm.data(), s.xn, rows, H, c.rms_eps, stream);
    } else {  // h += the previous layer's MLP output, then norm
      cuda::add_rmsnorm(s.h, s.proj, lw.attn_norm.data(), s.xn, rows, H, c.rms_eps, stream);
    }
    gemm_run(s.xn, lw.w_qkv, s.qkv, rows, qkv_w, H, lw.b_qkv.size() > 0 ? lw.b_qkv.data() : nullptr);
    // Q's heads and K's follow each other in a qkv row: one launch rotates both.
    cuda::rope(s.qkv, qkv_w, t + s.pos, rows, c.n_heads + KV, D, c.rope_dim, inv_freq.data(), interleaved, stream);
    if (ll.retrieval_before) append(with_bounds, ll.app_r);
    if (ll.streaming_before) append(no_bounds, ll.app_sb);
    for (const SelectRun& run : ll.select_runs) {
      // The CSR offsets are absolute, so a run's indptr pointers move and its entry pointers do not.
      const SelectOffsets& so = ll.sel;
      const auto a = static_cast<size_t>(run.first);
      cuda::PageSelectArgs ps;
      ps.config = cuda::PageSelectConfig{P, LP, run.sink_tokens, run.token_budget};
      ps.rows = static_cast<int32_t>(run.rows);
      ps.head_dim = static_cast<int32_t>(D);
      ps.group = static_cast<int32_t>(group);
      ps.max_blocks = s.max_blocks;
      ps.q = s.qkv;
      ps.q_offset = s.q_offsets + so.q_at + a;
      ps.kmin = kmin_pool.data();
      ps.kmax = kmax_pool.data();
      ps.page_indptr = t + so.indptr + a;
      ps.page_indices = lists + so.pages;
      ps.seq_lens = t + so.lens + a;
      ps.scores = s.scores;
      ps.selected_indptr = t + so.out_indptr + a;
      ps.selected_pages = lists + ll.decode_keys.pg + so.region;
      ps.selected_pos0 = lists + ll.decode_keys.p0 + so.region;
      ps.selected_len = lists + ll.decode_keys.ln + so.region;
      ps.selected_blocks = s.picked + so.picked_at;
      ps.row_ready = s.row_ready;
      cuda::page_select(ps, stream);
    }
    mark(static_cast<size_t>(1 + 2 * l));
    if (ll.masks != nullptr) {  // the dynamic rows' block masks, from this layer's queries and keys
      cuda::XAttentionArgs xa;
      xa.q = s.qkv;
      xa.q_stride = qkv_w;
      xa.kv = pool;
      xa.pages = on_device(ll.prefill_keys);
      xa.scale = scale;
      xa.workspace = s.mask_workspace;
      xa.allowed = s.block_allowed;
      ll.masks->run(xa, stream);
    }
    if (ll.prefill != nullptr) {
      cuda::PrefillArgs pa;
      pa.q = s.qkv;
      pa.q_stride = qkv_w;
      pa.o = s.att;
      pa.o_stride = q_dim;
      pa.k_new = s.qkv + q_dim;
      pa.v_new = s.qkv + q_dim + kv_dim;
      pa.kv_new_stride = qkv_w;
      pa.kv = pool;
      pa.pages = on_device(ll.prefill_keys);
      pa.block_allowed = s.block_allowed;
      pa.scale = scale;
      pa.workspace = s.split_workspace;
      pa.workspace_floats = s.split_floats;
      ll.prefill->run(pa, stream);
    }
    if (ll.decode != nullptr) {
      cuda::DecodeArgs da;
      da.q = s.qkv;
      da.q_stride = qkv_w;
      da.o = s.att;
      da.o_stride = q_dim;
      da.kv = pool;
      da.pages = on_device(ll.decode_keys);
      da.scale = scale;
      ll.decode->run(da, stream);
    }
    mark(static_cast<size_t>(2 + 2 * l));
    if (ll.streaming_after) append(no_bounds, ll.app_s);
    gemm_run(s.att, lw.wo, s.proj, rows, H, q_dim);
    cuda::add_rmsnorm(s.h, s.proj, lw.ffn_norm.data(), s.xn, rows, H, c.rms_eps, stream);
    gemm_run(s.xn, lw.w_gate_up, s.gate_up, rows, 2 * I, H);
    cuda::silu_mul(s.gate_up, s.act, rows, I, stream);
    gemm_run(s.act, lw.w_down, s.proj, rows, H, I);
  }
  if (s.out_rows == 0) return;
  // h += the last MLP output; the final norm; the rows that need logits gathered (the host's, then
  // the drawn ones); the LM head; fp32; the drawn rows sampled.
  cuda::add_rmsnorm(s.h, s.proj, final_norm.data(), s.xn, rows, H, c.rms_eps, stream);
  cuda::embedding_gather(s.xn, rows, H, t + s.selr, s.out_rows, s.sel, stream);
  gemm_run(s.sel, tied ? embed : lm_head, s.logits, s.out_rows, V, H);
  cuda::widen_bf16(s.logits, s.logits_f32, s.out_rows * V, stream);
  if (s.n_drawn > 0) {
    cuda::sample_rows(s.logits_f32 + s.n_host * V, V, static_cast<int32_t>(s.n_drawn), static_cast<int32_t>(V),
                      s.draw_params, s.draw_tokens, stream);
  }
}

}  // namespace sparseserve
