#include "engine/calibrate.h"

#include <cmath>
#include <random>

#include "common/errors.h"
#include "engine/cpu_forward.h"
#include "engine/dense_kv.h"
#include "engine/passkey.h"
#include "kernels/cpu/span_attention.h"

namespace sparseserve {

namespace {

// Dense attention plus, at the answer rows, each head's output under the Λ band (accumulated).
class ProbeBackend final : public KvBackend {
 public:
  ProbeBackend(const ModelConfig& c, kvcache::StreamingWindow w)
      : c_(c), dense_(c), window_(w), score_(static_cast<size_t>(c.n_layers * c.n_kv_heads), 0.0), count_(score_.size(), 0) {
    dense_.add_sequence(0);
  }
  void set_answer_rows(int64_t first, int64_t last) { first_ = first, last_ = last; }
  void begin_step(std::span<const ForwardSeq> b) override { dense_.begin_step(b); }
  void end_step(std::span<const ForwardSeq> b) override { dense_.end_step(b); }
  void reset() {
    dense_.release(0);
    dense_.add_sequence(0);
  }
  void attend(int64_t layer, std::span<const ForwardSeq> batch, const float* qkv, int64_t stride, float* out) override {
    dense_.attend(layer, batch, qkv, stride, out);
    const ForwardSeq& s = batch[0];
    const int64_t D = c_.head_dim, group = c_.n_heads / c_.n_kv_heads;
    const int64_t q_dim = c_.n_heads * D, kv_dim = c_.n_kv_heads * D;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const auto mask = kernels::cpu::AttentionMask::band(window_.sink_tokens, window_.local_tokens);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t h = 0; h < c_.n_kv_heads; ++h) {
      std::vector<float> scratch, band(static_cast<size_t>(D));
      double sum = 0;
      int64_t n = 0;
      for (int64_t t = first_; t <= last_; ++t) {
        const int64_t i = t - s.start;
        const kernels::cpu::KeySpan keys{qkv + q_dim + h * D, qkv + q_dim + kv_dim + h * D, s.start,
                                         static_cast<int32_t>(s.tokens.size()), static_cast<int32_t>(stride)};
        for (int64_t g = 0; g < group; ++g) {
          const int64_t qh = h * group + g;
          kernels::cpu::attend_spans(qkv + i * stride + qh * D, t, std::span(&keys, 1), mask, D, scale, band.data(), scratch);
          const float* o = out + i * q_dim + qh * D;
          double diff = 0, norm = 0;
          for (int64_t d = 0; d < D; ++d) {
            diff += (double(band[d]) - o[d]) * (double(band[d]) - o[d]);
            norm += double(o[d]) * o[d];
          }
          sum += std::sqrt(diff / std::max(norm, 1e-30));
          ++n;
        }
      }
      score_[static_cast<size_t>(layer * c_.n_kv_heads + h)] += sum;
      count_[static_cast<size_t>(layer * c_.n_kv_heads + h)] += n;
    }
  }
  kvcache::HeadGates gates() const {
    kvcache::HeadGates g{static_cast<int32_t>(c_.n_layers), static_cast<int32_t>(c_.n_kv_heads), {}};
    double mx = 0;
    for (size_t i = 0; i < score_.size(); ++i) mx = std::max(mx, score_[i] / std::max<int64_t>(count_[i], 1));
    for (size_t i = 0; i < score_.size(); ++i) {
      g.values.push_back(static_cast<float>(score_[i] / std::max<int64_t>(count_[i], 1) / (mx > 0 ? mx : 1.0)));
    }
    return g;
  }

 private:
  ModelConfig c_;
  DenseKvBackend dense_;
  kvcache::StreamingWindow window_;
  int64_t first_ = 0, last_ = -1;
  std::vector<double> score_;
  std::vector<int64_t> count_;
};

}  // namespace

kvcache::HeadGates calibrate_heads(const Model& model, const CalibrationOptions& opts,
                                   const std::function<void(int, int)>& progress) {
  if (opts.prompts < 1 || opts.needles < 1) throw InvalidArgument("calibration needs at least one prompt and one needle");
  if (opts.context_tokens + 16 > model.config.max_context) throw InvalidArgument("calibration context exceeds the model's");
  ProbeBackend probe(model.config, opts.window);
  CpuForward fwd(model);
  std::mt19937_64 rng(opts.seed);
  std::uniform_real_distribution<double> depth(0.05, 0.6);  // needles far enough back to leave the window
  const std::string hay = default_haystack();
  std::vector<float> logits;
  for (int p = 0; p < opts.prompts; ++p) {
    std::vector<double> depths;
    for (int i = 0; i < opts.needles; ++i) depths.push_back(depth(rng));
    const PasskeyPrompt pk = make_passkey_prompt(model.tokenizer, hay, opts.context_tokens, depths, rng);
    std::vector<int32_t> ids = pk.prompt;
    ids.insert(ids.end(), pk.answer.begin(), pk.answer.end());
    const auto n = static_cast<int64_t>(ids.size());
    // Rows predicting the answer: the last prompt token and every answer token but the last.
    probe.set_answer_rows(static_cast<int64_t>(pk.prompt.size()) - 1, n - 2);
    probe.reset();
    const ForwardSeq s{0, 0, ids, false, n, true};
    fwd.forward(std::span(&s, 1), probe, logits);
    if (progress) progress(p + 1, opts.prompts);
  }
  return probe.gates();
}

}  // namespace sparseserve
