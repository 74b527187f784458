#include "engine/head_ablation.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "common/errors.h"
#include "engine/dense_kv.h"
#include "kernels/cpu/span_attention.h"

namespace sparseserve {

// Dense attention over one sequence (id 0), except that one (layer, KV head), when set, attends
// under the Λ band at every row of the step, keys read back from the dense cache.
class HeadAblation::Backend final : public KvBackend {
 public:
  Backend(const ModelConfig& c, kvcache::StreamingWindow w) : c_(c), window_(w), dense_(c) { dense_.add_sequence(0); }
  void set_streaming(int64_t layer, int64_t head) { layer_ = layer, head_ = head; }  // -1: none
  void truncate(int64_t length) { dense_.truncate(0, length); }
  void begin_step(std::span<const ForwardSeq> b) override { dense_.begin_step(b); }
  void end_step(std::span<const ForwardSeq> b) override { dense_.end_step(b); }
  void attend(int64_t layer, std::span<const ForwardSeq> batch, const float* qkv, int64_t stride, float* out) override {
    dense_.attend(layer, batch, qkv, stride, out);
    if (layer != layer_) return;
    const ForwardSeq& s = batch[0];
    const DenseKvCache& kv = dense_.cache(0);
    const int64_t D = c_.head_dim, group = c_.n_heads / c_.n_kv_heads;
    const int64_t q_dim = c_.n_heads * D, kv_dim = c_.n_kv_heads * D, n = static_cast<int64_t>(s.tokens.size());
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const auto mask = kernels::cpu::AttentionMask::band(window_.sink_tokens, window_.local_tokens);
    const kernels::cpu::KeySpan keys{kv.k(layer) + head_ * D, kv.v(layer) + head_ * D, 0,
                                     static_cast<int32_t>(s.start + n), static_cast<int32_t>(kv_dim)};
#pragma omp parallel
    {
      std::vector<float> scratch;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t qh = head_ * group; qh < (head_ + 1) * group; ++qh) {
          kernels::cpu::attend_spans(qkv + i * stride + qh * D, s.start + i, std::span(&keys, 1), mask, D, scale,
                                     out + i * q_dim + qh * D, scratch);
        }
      }
    }
  }

 private:
  ModelConfig c_;
  kvcache::StreamingWindow window_;
  DenseKvBackend dense_;
  int64_t layer_ = -1, head_ = -1;
};

namespace {

// The step over the tail rows [r0, n); no logits (the answer rows are taken from the stream).
ForwardSeq tail_step(const CalibrationPrompt& p, int64_t r0) {
  const auto n = static_cast<int64_t>(p.ids.size());
  return {0, r0, std::span(p.ids).subspan(static_cast<size_t>(r0)), false, n, /*no_logits=*/true};
}

}  // namespace

HeadAblation::HeadAblation(const Model& model, CalibrationPrompt prompt, kvcache::StreamingWindow window)
    : model_(model),
      fwd_(model),
      prompt_(std::move(prompt)),
      r0_(std::min<int64_t>(int64_t{window.sink_tokens} + window.local_tokens, prompt_.first_row)),
      kv_(std::make_unique<Backend>(model.config, window)),
      stream_(static_cast<size_t>(model.config.n_layers)) {
  const auto n = static_cast<int64_t>(prompt_.ids.size());
  if (prompt_.first_row < 0 || prompt_.first_row > prompt_.last_row || prompt_.last_row + 1 >= n) {
    throw InvalidArgument("ablation prompt: answer rows outside the prompt");
  }
  const ForwardSeq head{0, 0, std::span(prompt_.ids).first(static_cast<size_t>(r0_)), false, n, /*no_logits=*/true};
  const ForwardSeq tail = tail_step(prompt_, r0_);
  if (r0_ > 0) fwd_.forward(std::span(&head, 1), *kv_, logits_);
  fwd_.forward(std::span(&tail, 1), *kv_, logits_, [&](int64_t layer, std::span<const float> x) {
    if (layer < model_.config.n_layers) stream_[static_cast<size_t>(layer)].assign(x.begin(), x.end());
    keep_answer_rows(layer, x);
  });
  kv_->truncate(r0_);
  dense_nll_ = answer_nll();
}

HeadAblation::~HeadAblation() = default;

double HeadAblation::streaming_nll(int64_t layer, int64_t head) {
  const ModelConfig& c = model_.config;
  if (layer < 0 || layer >= c.n_layers || head < 0 || head >= c.n_kv_heads) {
    throw InvalidArgument("no (layer " + std::to_string(layer) + ", KV head " + std::to_string(head) + ") in the model");
  }
  const ForwardSeq tail = tail_step(prompt_, r0_);
  kv_->set_streaming(layer, head);
  fwd_.forward_from_layer(layer, stream_[static_cast<size_t>(layer)], std::span(&tail, 1), *kv_, logits_,
                          [&](int64_t l, std::span<const float> x) { keep_answer_rows(l, x); });
  kv_->truncate(r0_);
  kv_->set_streaming(-1, -1);
  return answer_nll();
}

void HeadAblation::keep_answer_rows(int64_t layer, std::span<const float> stream) {
  if (layer != model_.config.n_layers) return;
  const int64_t H = model_.config.hidden;
  answer_stream_.assign(stream.begin() + (prompt_.first_row - r0_) * H, stream.begin() + (prompt_.last_row + 1 - r0_) * H);
}

double HeadAblation::answer_nll() {
  fwd_.project_logits(answer_stream_, logits_);
  const int64_t V = model_.config.vocab_size;
  double nll = 0;
  for (int64_t t = prompt_.first_row; t <= prompt_.last_row; ++t) {
    const float* row = logits_.data() + (t - prompt_.first_row) * V;
    const double mx = *std::max_element(row, row + V);
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
    nll += mx + std::log(sum) - row[prompt_.ids[static_cast<size_t>(t + 1)]];
  }
  return nll;
}

}  // namespace sparseserve
