#include "engine/calibrate.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "common/errors.h"
#include "engine/cpu_forward.h"
#include "engine/dense_kv.h"
#include "engine/head_ablation.h"
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
  // Mean relative change per (layer, KV head), row-major.
  std::vector<double> scores() const {
    std::vector<double> out;
    for (size_t i = 0; i < score_.size(); ++i) out.push_back(score_[i] / std::max<int64_t>(count_[i], 1));
    return out;
  }

 private:
  ModelConfig c_;
  DenseKvBackend dense_;
  kvcache::StreamingWindow window_;
  int64_t first_ = 0, last_ = -1;
  std::vector<double> score_;
  std::vector<int64_t> count_;
};

std::vector<double> score_output_change(const Model& model, const CalibrationOptions& opts,
                                        const std::function<void(const CalibrationProgress&)>& progress) {
  const auto prompts = calibration_prompts(model, opts);
  ProbeBackend probe(model.config, opts.window);
  CpuForward fwd(model);
  std::vector<float> logits;
  const auto L = static_cast<int32_t>(model.config.n_layers);
  for (int p = 0; p < opts.prompts; ++p) {
    const CalibrationPrompt& a = prompts[static_cast<size_t>(p)];
    probe.set_answer_rows(a.first_row, a.last_row);
    probe.reset();
    const ForwardSeq s{0, 0, a.ids, false, static_cast<int64_t>(a.ids.size()), /*no_logits=*/true};
    fwd.forward(std::span(&s, 1), probe, logits);
    if (progress) progress({p + 1, opts.prompts, L, L, double(p + 1) / opts.prompts});
  }
  return probe.scores();
}

std::vector<double> score_ablation(const Model& model, const CalibrationOptions& opts,
                                   const std::function<void(const CalibrationProgress&)>& progress) {
  const int64_t L = model.config.n_layers, KV = model.config.n_kv_heads;
  std::vector<double> score(static_cast<size_t>(L * KV), 0.0);
  // Work in layer passes over a prompt's tail rows: the dense pass, then KV heads × (L − l) per layer l.
  const double work_per_prompt = static_cast<double>(L + KV * L * (L + 1) / 2);
  int p = 0;
  for (CalibrationPrompt& prompt : calibration_prompts(model, opts)) {
    HeadAblation ablation(model, std::move(prompt), opts.window);
    double work = static_cast<double>(L);
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t h = 0; h < KV; ++h) {
        score[static_cast<size_t>(l * KV + h)] += ablation.streaming_nll(l, h) - ablation.dense_nll();
      }
      work += static_cast<double>(KV * (L - l));
      if (progress) {
        progress({p + 1, opts.prompts, static_cast<int32_t>(l + 1), static_cast<int32_t>(L),
                  (p * work_per_prompt + work) / (opts.prompts * work_per_prompt)});
      }
    }
    ++p;
  }
  for (double& s : score) s /= opts.prompts;
  return score;
}

}  // namespace

std::string streaming_window_too_long(const CalibrationOptions& opts) {
  return "the streaming window (sink " + std::to_string(opts.window.sink_tokens) + " + local " +
         std::to_string(opts.window.local_tokens) + " tokens) must be shorter than the " +
         std::to_string(opts.context_tokens) + "-token prompts: a band covering the whole prompt is dense attention";
}

std::string_view calibration_method_name(CalibrationMethod m) {
  return m == CalibrationMethod::kAblation ? "ablation" : "output-change";
}

std::vector<CalibrationPrompt> calibration_prompts(const Model& model, const CalibrationOptions& opts) {
  std::mt19937_64 rng(opts.seed);
  std::uniform_real_distribution<double> depth(0.05, 0.6);  // needles far enough back to leave the window
  const std::string hay = opts.haystack.empty() ? default_haystack().text : opts.haystack;
  std::vector<CalibrationPrompt> out;
  for (int p = 0; p < opts.prompts; ++p) {
    std::vector<double> depths;
    for (int i = 0; i < opts.needles; ++i) depths.push_back(depth(rng));
    const PasskeyPrompt pk = make_passkey_prompt(model.tokenizer, hay, opts.context_tokens, depths, rng);
    CalibrationPrompt a{pk.prompt, static_cast<int64_t>(pk.prompt.size()) - 1, 0};
    a.ids.insert(a.ids.end(), pk.answer.begin(), pk.answer.end());
    a.last_row = static_cast<int64_t>(a.ids.size()) - 2;
    out.push_back(std::move(a));
  }
  return out;
}

std::vector<double> score_heads(const Model& model, const CalibrationOptions& opts,
                                const std::function<void(const CalibrationProgress&)>& progress) {
  if (opts.prompts < 1 || opts.needles < 1) throw InvalidArgument("calibration needs at least one prompt and one needle");
  if (opts.context_tokens < 256) throw InvalidArgument("calibration prompts need at least 256 tokens");
  if (opts.context_tokens > model.config.max_context - 16) throw InvalidArgument("calibration context exceeds the model's");
  if (opts.window.sink_tokens < 0 || opts.window.local_tokens < 1) {
    throw InvalidArgument("calibration window needs sink ≥ 0 and local ≥ 1 tokens");
  }
  if (int64_t{opts.window.sink_tokens} + opts.window.local_tokens >= opts.context_tokens) {
    throw InvalidArgument(streaming_window_too_long(opts));
  }
  return opts.method == CalibrationMethod::kAblation ? score_ablation(model, opts, progress)
                                                      : score_output_change(model, opts, progress);
}

kvcache::HeadGates gates_from_scores(const std::vector<double>& score, int32_t n_layers, int32_t n_kv_heads) {
  if (score.empty() || score.size() != static_cast<size_t>(n_layers) * static_cast<size_t>(n_kv_heads)) {
    throw InvalidArgument("calibration: " + std::to_string(score.size()) + " scores for " + std::to_string(n_layers) +
                          " layers of " + std::to_string(n_kv_heads) + " KV heads");
  }
  for (size_t i = 0; i < score.size(); ++i) {
    if (!std::isfinite(score[i])) throw Error("calibration: the score of head " + std::to_string(i) + " is not finite");
  }
  const double mx = *std::max_element(score.begin(), score.end());
  // None positive: streaming changed nothing for any head (the needles all in the band), so the
  // scores rank nothing and a pattern from them would be arbitrary.
  if (!(mx > 0)) throw Error("calibration: no head's score is above zero; use longer prompts or a shorter window");
  kvcache::HeadGates g{n_layers, n_kv_heads, {}};
  for (double s : score) g.values.push_back(static_cast<float>(std::clamp(s / mx, 0.0, 1.0)));
  return g;
}

kvcache::HeadGates calibrate_heads(const Model& model, const CalibrationOptions& opts,
                                   const std::function<void(const CalibrationProgress&)>& progress) {
  return gates_from_scores(score_heads(model, opts, progress), static_cast<int32_t>(model.config.n_layers),
                           static_cast<int32_t>(model.config.n_kv_heads));
}

}  // namespace sparseserve
