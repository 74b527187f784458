#include "engine/cuda/cuda_forward.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>

#include "common/errors.h"
#include "common/half.h"
#include "engine/forward_step.h"
#include "engine/rope_freqs.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_append.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/rope.h"
#include "kvcache/head_roles.h"

namespace sparseserve {

namespace cuda = kernels::cuda;
using bf16 = __nv_bfloat16;
using cuda::DeviceBuffer;

namespace {

// Matrices with the same columns stacked by rows (Q|K|V, gate|up), dequantized, as one bf16 device
// matrix [Σ rows][cols].
DeviceBuffer<bf16> upload_rows(std::initializer_list<const kernels::cpu::WeightMatrix*> parts) {
  const int64_t cols = (*parts.begin())->cols;
  int64_t rows = 0;
  for (const auto* p : parts) {
    check(p->cols == cols, "CudaForward: stacked weights differ in columns");
    rows += p->rows;
  }
  std::vector<uint16_t> host(static_cast<size_t>(rows * cols));
  std::vector<float> row(static_cast<size_t>(cols));
  int64_t r = 0;
  for (const auto* p : parts) {
    for (int64_t i = 0; i < p->rows; ++i, ++r) {
      kernels::cpu::dequantize_weight_row(*p, i, row.data());
      for (int64_t c = 0; c < cols; ++c) host[static_cast<size_t>(r * cols + c)] = f32_to_bf16(row[static_cast<size_t>(c)]);
    }
  }
  return DeviceBuffer<bf16>(std::span<const uint16_t>(host));
}

// Vectors concatenated (Q|K|V biases) as bf16; an empty buffer when all are empty.
DeviceBuffer<bf16> upload_vectors(std::initializer_list<const std::vector<float>*> parts) {
  std::vector<uint16_t> host;
  for (const auto* p : parts) {
    for (float x : *p) host.push_back(f32_to_bf16(x));
  }
  if (host.empty()) return {};
  return DeviceBuffer<bf16>(std::span<const uint16_t>(host));
}

// Grows `buf` to at least n elements (contents dropped).
template <class T>
T* sized(DeviceBuffer<T>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf = DeviceBuffer<T>(static_cast<size_t>(n));
  return buf.data();
}

}  // namespace

struct CudaForward::Impl {
  struct Layer {
    DeviceBuffer<bf16> attn_norm, w_qkv, b_qkv, wo, ffn_norm, w_gate_up, w_down;
  };

  Impl(const Model& m, const kvcache::KvCacheManager& kv, cudaStream_t s)
      : model(m), manager(kv), stream(s),
        roles(kvcache::HeadRoles::all_retrieval(static_cast<int32_t>(m.config.n_layers),
                                                static_cast<int32_t>(m.config.n_kv_heads))),
        gemm(cuda::Gemm::kDefaultWorkspaceBytes, cuda::GemmTuning::kHeuristic) {}

  const Model& model;
  const kvcache::KvCacheManager& manager;
  cudaStream_t stream;
  kvcache::HeadRoles roles;
  std::vector<Layer> layers;
  DeviceBuffer<bf16> embed, lm_head, final_norm;
  bool tied = false;
  DeviceBuffer<float> inv_freq;
  DeviceBuffer<bf16> k_pool, v_pool;
  cuda::Gemm gemm;
  std::unique_ptr<cuda::PrefillAttention> prefill;
  // Step buffers, grown as needed: activations [rows][width] bf16, the step's int32 tables.
  DeviceBuffer<bf16> h, xn, qkv, att, proj, gate_up, act, sel, logits;
  DeviceBuffer<int32_t> tables;

  void run(std::span<const ForwardSeq> batch, std::vector<float>& out);
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
  const auto pool_elems = static_cast<size_t>(manager.num_pages()) * static_cast<size_t>(manager.config().page_tokens) *
                          static_cast<size_t>(c.head_dim);
  m.k_pool = DeviceBuffer<bf16>(std::max<size_t>(pool_elems, 1));
  m.v_pool = DeviceBuffer<bf16>(std::max<size_t>(pool_elems, 1));
  m.k_pool.fill_bytes(0, stream);  // every slot finite (PagedKvPool's contract)
  m.v_pool.fill_bytes(0, stream);
  cuda::PrefillConfig pc;
  pc.head_dim = static_cast<int32_t>(c.head_dim);
  pc.group = static_cast<int32_t>(c.n_heads / c.n_kv_heads);
  pc.page_tokens = manager.config().page_tokens;
  m.prefill = std::make_unique<cuda::PrefillAttention>(pc);
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

CudaForward::~CudaForward() = default;

void CudaForward::forward(std::span<const ForwardSeq> batch, std::vector<float>& logits) { impl_->run(batch, logits); }

void CudaForward::Impl::run(std::span<const ForwardSeq> batch, std::vector<float>& out) {
  const ModelConfig& c = model.config;
  const int64_t H = c.hidden, D = c.head_dim, L = c.n_layers, KV = c.n_kv_heads, I = c.intermediate, V = c.vocab_size;
  const int64_t q_dim = c.n_heads * D, kv_dim = KV * D, qkv_w = q_dim + 2 * kv_dim;
  const int32_t P = manager.config().page_tokens;

  // Checks first: nothing is written for a bad batch.
  const auto [rows, out_rows] = check_step(c, batch);
  for (const ForwardSeq& s : batch) {
    const kvcache::SequenceKv& kv = manager.sequence(s.id);
    check(kv.retrieval_slots() == roles.slots(kvcache::HeadRole::kRetrieval) && kv.streaming_slots() == 0,
          "CudaForward: the sequence's layout is not the dense (all-retrieval) one");
    check(kv.length() >= s.start + static_cast<int64_t>(s.tokens.size()),
          "CudaForward: KV pages for the step were not allocated");
  }
  out.assign(static_cast<size_t>(out_rows * V), 0.0f);
  if (rows == 0) return;

  // The step's tables, packed into one upload (offsets into `host`):
  //   ids, pos, off [rows]: token, position, slot within its page;  sel [out_rows]: rows needing logits;
  //   app [L][KV][rows]: the page each token's K/V goes to, per lane;
  //   indptr [B·KV + 1], pos0 / len [E]: the attention rows' key pages (the same in every layer);
  //   pages [L][E]: their page ids per layer.
  std::vector<int32_t> host;
  const auto take = [&](size_t n) {
    const size_t at = host.size();
    host.resize(at + n);
    return at;
  };
  const auto R = static_cast<size_t>(rows);
  const size_t ids = take(R), pos = take(R), off = take(R), sel = take(static_cast<size_t>(out_rows));
  const size_t app = take(static_cast<size_t>(L * KV) * R);
  std::vector<cuda::PrefillRow> prows;
  std::vector<int32_t> indptr{0}, pos0, len;
  {
    int64_t r = 0, o = 0;
    for (const ForwardSeq& s : batch) {
      const auto n = static_cast<int64_t>(s.tokens.size());
      const kvcache::SequenceKv& kv = manager.sequence(s.id);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = s.start + i;
        host[ids + static_cast<size_t>(r + i)] = s.tokens[static_cast<size_t>(i)];
        host[pos + static_cast<size_t>(r + i)] = static_cast<int32_t>(p);
        host[off + static_cast<size_t>(r + i)] = static_cast<int32_t>(p % P);
        for (int64_t l = 0; l < L; ++l) {
          for (int64_t hd = 0; hd < KV; ++hd) {
            const auto& pages = kv.retrieval_pages(roles.slot(static_cast<int32_t>(l), static_cast<int32_t>(hd)));
            host[app + static_cast<size_t>((l * KV + hd) * rows + r + i)] = pages[static_cast<size_t>(p / P)];
          }
        }
      }
      for (int64_t i = first_logit_row(s); i < n; ++i) host[sel + static_cast<size_t>(o++)] = static_cast<int32_t>(r + i);
      const int64_t end = s.start + n;
      for (int64_t hd = 0; hd < KV && n > 0; ++hd) {
        cuda::PrefillRow pr;
        pr.q_row0 = static_cast<int32_t>(r);
        pr.n_tokens = static_cast<int32_t>(n);
        pr.q_pos0 = static_cast<int32_t>(s.start);
        pr.kv_head = static_cast<int32_t>(hd);
        prows.push_back(pr);
        for (int64_t b = 0; b * P < end; ++b) {
          pos0.push_back(static_cast<int32_t>(b * P));
          len.push_back(static_cast<int32_t>(std::min<int64_t>(P, end - b * P)));
        }
        indptr.push_back(static_cast<int32_t>(pos0.size()));
      }
      r += n;
    }
  }
  const size_t E = pos0.size();
  const size_t ip = take(indptr.size()), p0 = take(E), ln = take(E), pg = take(static_cast<size_t>(L) * E);
  std::copy(indptr.begin(), indptr.end(), host.begin() + static_cast<std::ptrdiff_t>(ip));
  std::copy(pos0.begin(), pos0.end(), host.begin() + static_cast<std::ptrdiff_t>(p0));
  std::copy(len.begin(), len.end(), host.begin() + static_cast<std::ptrdiff_t>(ln));
  for (int64_t l = 0; l < L; ++l) {  // list entries in the order built above: sequences, heads, blocks
    size_t e = 0;
    for (const ForwardSeq& s : batch) {
      if (s.tokens.empty()) continue;
      const kvcache::SequenceKv& kv = manager.sequence(s.id);
      const int64_t end = s.start + static_cast<int64_t>(s.tokens.size());
      for (int64_t hd = 0; hd < KV; ++hd) {
        const auto& pages = kv.retrieval_pages(roles.slot(static_cast<int32_t>(l), static_cast<int32_t>(hd)));
        for (int64_t b = 0; b * P < end; ++b) host[pg + static_cast<size_t>(l) * E + e++] = pages[static_cast<size_t>(b)];
      }
    }
  }
  int32_t* t = sized(tables, static_cast<int64_t>(host.size()));
  tables.upload(host, stream);
  prefill->plan(prows, stream);

  bf16* hp = sized(h, rows * H);
  bf16* xp = sized(xn, rows * H);
  bf16* qp = sized(qkv, rows * qkv_w);
  bf16* ap = sized(att, rows * q_dim);
  bf16* pp = sized(proj, rows * H);
  bf16* gp = sized(gate_up, rows * 2 * I);
  bf16* cp = sized(act, rows * I);
  const auto gemm_run = [&](const bf16* x, const DeviceBuffer<bf16>& w, bf16* y, int64_t M, int64_t N, int64_t K,
                            const bf16* bias = nullptr, int64_t ldy = 0) {
    cuda::GemmArgs g;
    g.x = x;
    g.w = w.data();
    g.y = y;
    g.bias = bias;
    g.M = M, g.N = N, g.K = K, g.ldy = ldy;
    gemm.run(g, stream);
  };
  const bool interleaved = c.rope_layout == RopeLayout::kInterleaved;
  const cuda::PagedKvPool pool{k_pool.data(), v_pool.data(), manager.num_pages(), P, static_cast<int32_t>(D)};
  cuda::KvPoolView view;
  view.k = k_pool.data();
  view.v = v_pool.data();
  view.num_pages = manager.num_pages();
  view.page_tokens = P;
  view.logical_page_tokens = P;
  view.head_dim = static_cast<int32_t>(D);

  cuda::embedding_gather(embed.data(), V, H, t + ids, rows, hp, stream);
  for (int64_t l = 0; l < L; ++l) {
    const Layer& lw = layers[static_cast<size_t>(l)];
    if (l == 0) {
      cuda::rmsnorm(hp, lw.attn_norm.data(), xp, rows, H, c.rms_eps, stream);
    } else {  // h += the previous layer's MLP output, then norm
      cuda::add_rmsnorm(hp, pp, lw.attn_norm.data(), xp, rows, H, c.rms_eps, stream);
    }
    gemm_run(xp, lw.w_qkv, qp, rows, qkv_w, H, lw.b_qkv.size() > 0 ? lw.b_qkv.data() : nullptr);
    cuda::rope(qp, qkv_w, t + pos, rows, c.n_heads, D, c.rope_dim, inv_freq.data(), interleaved, stream);
    cuda::rope(qp + q_dim, qkv_w, t + pos, rows, KV, D, c.rope_dim, inv_freq.data(), interleaved, stream);
    for (int64_t hd = 0; hd < KV; ++hd) {
      cuda::KvAppendRows a;
      a.k_new = qp + q_dim + hd * D;
      a.v_new = qp + q_dim + kv_dim + hd * D;
      a.k_stride = a.v_stride = qkv_w;
      a.page_ids = t + app + static_cast<size_t>((l * KV + hd) * rows);
      a.offsets = t + off;
      a.rows = rows;
      cuda::kv_append(view, a, stream);
    }
    cuda::PrefillArgs pa;
    pa.q = qp;
    pa.q_stride = qkv_w;
    pa.o = ap;
    pa.o_stride = q_dim;
    pa.kv = pool;
    pa.pages = cuda::KeyPageList{t + ip, t + pg + static_cast<size_t>(l) * E, t + p0, t + ln};
    pa.scale = 1.0f / std::sqrt(static_cast<float>(D));
    prefill->run(pa, stream);
    gemm_run(ap, lw.wo, pp, rows, H, q_dim);
    cuda::add_rmsnorm(hp, pp, lw.ffn_norm.data(), xp, rows, H, c.rms_eps, stream);
    gemm_run(xp, lw.w_gate_up, gp, rows, 2 * I, H);
    cuda::silu_mul(gp, cp, rows, I, stream);
    gemm_run(cp, lw.w_down, pp, rows, H, I);
  }
  if (out_rows > 0) {
    // h += the last MLP output; the final norm; the rows that need logits gathered; the LM head.
    cuda::add_rmsnorm(hp, pp, final_norm.data(), xp, rows, H, c.rms_eps, stream);
    bf16* sp = sized(this->sel, out_rows * H);
    cuda::embedding_gather(xp, rows, H, t + sel, out_rows, sp, stream);
    bf16* lp = sized(logits, out_rows * V);
    gemm_run(sp, tied ? embed : lm_head, lp, out_rows, V, H);
    std::vector<uint16_t> bits(static_cast<size_t>(out_rows * V));
    CUDA_CHECK(cudaMemcpyAsync(bits.data(), lp, bits.size() * sizeof(uint16_t), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    std::transform(bits.begin(), bits.end(), out.begin(), bf16_to_f32);
  } else {
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }
}

}  // namespace sparseserve
