#include "engine/cpu_forward.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "common/errors.h"
#include "engine/forward_step.h"
#include "engine/rope_freqs.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"

namespace sparseserve {

namespace cpu = kernels::cpu;

CpuForward::CpuForward(const Model& model, kernels::cpu::Numerics numerics)
    : model_(model), numerics_(numerics), inv_freq_(rope_inv_freq(model.config, model.weights.rope_freq_factors)) {}

void CpuForward::project_logits(std::span<const float> residual, std::vector<float>& logits) {
  const ModelConfig& c = model_.config;
  const int64_t H = c.hidden;
  if (residual.size() % static_cast<size_t>(H) != 0) throw InvalidArgument("residual is not a whole number of rows");
  const auto rows = static_cast<int64_t>(residual.size()) / H;
  sel_.assign(residual.begin(), residual.end());
  logits.assign(static_cast<size_t>(rows * c.vocab_size), 0.0f);
  head(sel_.data(), rows, logits.data());
}

void CpuForward::head(float* x, int64_t rows, float* logits) {
  if (rows == 0) return;
  const ModelConfig& c = model_.config;
  cpu::rmsnorm(x, model_.weights.final_norm.data(), x, rows, c.hidden, c.rms_eps);
  cpu::matmul(x, rows, model_.weights.lm_head, logits, nullptr, 0, numerics_);
}

void CpuForward::run(int64_t first_layer, std::span<const float> residual, std::span<const ForwardSeq> batch,
                     KvBackend& kv, std::vector<float>& logits, const LayerTap* tap) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  const int64_t H = c.hidden, D = c.head_dim;
  const int64_t q_dim = c.n_heads * D, kv_dim = c.n_kv_heads * D;
  const int64_t qkv_w = q_dim + 2 * kv_dim;

  // Validate the whole batch before touching any cache.
  const auto [rows, out_rows] = check_step(c, batch);
  if (first_layer < 0 || first_layer > c.n_layers) {
    throw InvalidArgument("first layer " + std::to_string(first_layer) + " outside [0, " + std::to_string(c.n_layers) + "]");
  }
  if (first_layer > 0 && residual.size() != static_cast<size_t>(rows * H)) {
    throw InvalidArgument("residual of " + std::to_string(residual.size()) + " floats for " + std::to_string(rows) +
                          " rows of " + std::to_string(H));
  }
  logits.assign(static_cast<size_t>(out_rows * c.vocab_size), 0.0f);
  if (rows == 0) return;
  kv.begin_step(batch);

  auto sized = [](std::vector<float>& v, int64_t n) {
    if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
    return v.data();
  };
  float* h = sized(h_, rows * H);
  float* xn = sized(xn_, rows * H);
  float* qkv = sized(qkv_, rows * qkv_w);
  float* att = sized(att_, rows * q_dim);
  float* proj = sized(proj_, rows * H);
  float* gate_up = sized(gate_up_, rows * 2 * c.intermediate);
  float* act = sized(act_, rows * c.intermediate);
  pos_.resize(static_cast<size_t>(rows));

  int64_t r = 0;
  for (const ForwardSeq& s : batch) {
    for (size_t i = 0; i < s.tokens.size(); ++i, ++r) {
      pos_[static_cast<size_t>(r)] = static_cast<int32_t>(s.start + static_cast<int64_t>(i));
      if (first_layer == 0) cpu::dequantize_weight_row(w.embed, s.tokens[i], h + r * H);
    }
  }
  if (first_layer > 0) std::memcpy(h, residual.data(), sizeof(float) * static_cast<size_t>(rows * H));
  const std::span<const float> stream(h, static_cast<size_t>(rows * H));

  for (int64_t l = first_layer; l < c.n_layers; ++l) {
    const LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    if (l == first_layer) {  // h is the stream entering l
      cpu::rmsnorm(h, lw.attn_norm.data(), xn, rows, H, c.rms_eps);
    } else {  // h += previous layer's MLP output, then norm
      cpu::add_rmsnorm(h, proj, lw.attn_norm.data(), xn, rows, H, c.rms_eps);
    }
    if (tap) (*tap)(l, stream);
    auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };
    cpu::matmul(xn, rows, lw.wq, qkv, bias(lw.bq), qkv_w, numerics_);
    cpu::matmul(xn, rows, lw.wk, qkv + q_dim, bias(lw.bk), qkv_w, numerics_);
    cpu::matmul(xn, rows, lw.wv, qkv + q_dim + kv_dim, bias(lw.bv), qkv_w, numerics_);
    const bool interleaved = c.rope_layout == RopeLayout::kInterleaved;
    cpu::rope(qkv, qkv_w, pos_.data(), rows, c.n_heads, D, c.rope_dim, inv_freq_.data(), interleaved);
    cpu::rope(qkv + q_dim, qkv_w, pos_.data(), rows, c.n_kv_heads, D, c.rope_dim, inv_freq_.data(), interleaved);

    kv.attend(l, batch, qkv, qkv_w, att);
    cpu::matmul(att, rows, lw.wo, proj, nullptr, 0, numerics_);
    cpu::add_rmsnorm(h, proj, lw.ffn_norm.data(), xn, rows, H, c.rms_eps);
    cpu::matmul(xn, rows, lw.w_gate, gate_up, nullptr, 2 * c.intermediate, numerics_);
    cpu::matmul(xn, rows, lw.w_up, gate_up + c.intermediate, nullptr, 2 * c.intermediate, numerics_);
    cpu::silu_mul(gate_up, act, rows, c.intermediate);
    cpu::matmul(act, rows, lw.w_down, proj, nullptr, 0, numerics_);
  }

  // Gather the rows that need logits, apply the last residual add and the final norm, project.
  float* sel = sized(sel_, out_rows * H);
  if (first_layer < c.n_layers) cpu::add_inplace(h, proj, rows * H);
  if (tap) (*tap)(c.n_layers, stream);
  r = 0;
  int64_t o = 0;
  for (const ForwardSeq& s : batch) {
    const auto n = static_cast<int64_t>(s.tokens.size());
    for (int64_t i = first_logit_row(s); i < n; ++i, ++o) {
      std::memcpy(sel + o * H, h + (r + i) * H, sizeof(float) * static_cast<size_t>(H));
    }
    r += n;
  }
  kv.end_step(batch);
  head(sel, out_rows, logits.data());
}

}  // namespace sparseserve
