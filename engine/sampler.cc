#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "common/errors.h"

namespace sparseserve {

void SamplingParams::validate(int64_t vocab_size) const {
  auto bad = [](const std::string& what) { throw InvalidArgument(what); };
  if (!(temperature >= 0.0f) || temperature > 100.0f) bad("temperature must be in [0, 100]");
  if (!(top_p > 0.0f && top_p <= 1.0f)) bad("top_p must be in (0, 1]");
  if (top_k < -1) bad("top_k must be -1, 0 (off) or positive");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) bad("min_p must be in [0, 1]");
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) bad("presence_penalty must be in [-2, 2]");
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) bad("frequency_penalty must be in [-2, 2]");
  if (!(repetition_penalty > 0.0f && std::isfinite(repetition_penalty))) bad("repetition_penalty must be finite and > 0");
  for (const auto& [id, bias] : logit_bias) {
    if (id < 0 || id >= vocab_size) bad("logit_bias token id " + std::to_string(id) + " is outside the vocabulary");
    if (std::isnan(bias)) bad("logit_bias values must be numbers");
  }
}

Sampler::Sampler(SamplingParams params, std::span<const int32_t> prompt)
    : params_(std::move(params)), rng_(params_.seed ? *params_.seed : std::random_device{}()) {
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t t : prompt) {
      if (t < 0) continue;
      if (static_cast<size_t>(t) >= seen_mask_.size()) seen_mask_.resize(static_cast<size_t>(t) + 1, 0);
      if (!seen_mask_[static_cast<size_t>(t)]) {
        seen_mask_[static_cast<size_t>(t)] = 1;
        seen_.push_back(t);
      }
    }
  }
}

void Sampler::accept(int32_t token) {
  output_counts_[token] += 1;
  if (params_.repetition_penalty != 1.0f) {
    if (static_cast<size_t>(token) >= seen_mask_.size()) seen_mask_.resize(static_cast<size_t>(token) + 1, 0);
    if (!seen_mask_[static_cast<size_t>(token)]) {
      seen_mask_[static_cast<size_t>(token)] = 1;
      seen_.push_back(token);
    }
  }
}

void Sampler::apply_penalties(std::span<float> logits) const {
  for (const auto& [id, bias] : params_.logit_bias) {
    logits[static_cast<size_t>(id)] += std::clamp(bias, -SamplingParams::kMaxLogitBias, SamplingParams::kMaxLogitBias);
  }
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t t : seen_) {
      float& l = logits[static_cast<size_t>(t)];
      l = l > 0.0f ? l / params_.repetition_penalty : l * params_.repetition_penalty;
    }
  }
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    for (const auto& [t, n] : output_counts_) {
      logits[static_cast<size_t>(t)] -= params_.presence_penalty + params_.frequency_penalty * static_cast<float>(n);
    }
  }
}

int32_t Sampler::sample(std::span<float> logits) {
  apply_penalties(logits);
  // A NaN logit counts as −∞: it is never drawn, and the sort below needs a strict weak order. A row
  // whose largest logit is not finite (+∞, or every logit −∞) takes the greedy token: the first
  // index of the largest (kernels/cuda/sampling.h does the same).
  for (float& l : logits) {
    if (std::isnan(l)) l = -INFINITY;
  }
  const auto V = static_cast<int32_t>(logits.size());
  const auto largest = std::max_element(logits.begin(), logits.end());
  int32_t chosen;
  if (params_.temperature == 0.0f || params_.top_k == 1 || !std::isfinite(*largest)) {
    chosen = static_cast<int32_t>(largest - logits.begin());
  } else {
    // Candidates sorted by logit (ties by id, so results never depend on sort stability).
    order_.resize(static_cast<size_t>(V));
    std::iota(order_.begin(), order_.end(), 0);
    const auto by_logit = [&](int32_t a, int32_t b) {
      return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
             (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
    };
    const int32_t k = params_.top_k > 0 ? std::min(params_.top_k, V) : V;
    const bool filtered = k < V || params_.top_p < 1.0f || params_.min_p > 0.0f;
    if (k < V) {
      std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), by_logit);
    } else if (filtered) {
      std::sort(order_.begin(), order_.end(), by_logit);
    }  // else: plain temperature sampling draws in id order, no sort needed
    // Softmax over the k candidates at the temperature (in double for stable sums).
    const double inv_t = 1.0 / params_.sampling_temperature();
    const double top = *largest;
    std::vector<double> p(static_cast<size_t>(k));
    double sum = 0.0;
    for (int32_t i = 0; i < k; ++i) {
      p[static_cast<size_t>(i)] = std::exp((logits[static_cast<size_t>(order_[static_cast<size_t>(i)])] - top) * inv_t);
      sum += p[static_cast<size_t>(i)];
    }
    for (double& x : p) x /= sum;
    // min-p, as vLLM V1 applies it before top-k / top-p: drop tokens below min_p times the most
    // likely one's probability (a suffix of the ranking, so with top-k the shorter prefix stays).
    int32_t n = k;
    if (params_.min_p > 0.0f) {
      const double floor = params_.min_p * p[0];
      int32_t m = 1;
      while (m < n && p[static_cast<size_t>(m)] >= floor) ++m;
      n = m;
    }
    double mass = 0.0;
    for (int32_t i = 0; i < n; ++i) mass += p[static_cast<size_t>(i)];
    // top-p over what is left, renormalised: the smallest prefix whose share of it reaches top_p (at
    // least one token).
    if (params_.top_p < 1.0f) {
      const double target = params_.top_p * mass;
      double cum = 0.0;
      for (int32_t i = 0; i < n; ++i) {
        cum += p[static_cast<size_t>(i)];
        if (cum >= target) {
          n = i + 1;
          mass = cum;
          break;
        }
      }
    }
    // Uniform in [0, mass) from 53 random bits: identical across platforms for the same seed.
    const double u = static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0) * mass;
    double cum = 0.0;
    chosen = order_[static_cast<size_t>(n - 1)];
    for (int32_t i = 0; i < n; ++i) {
      cum += p[static_cast<size_t>(i)];
      if (u < cum) {
        chosen = order_[static_cast<size_t>(i)];
        break;
      }
    }
  }
  accept(chosen);
  return chosen;
}

}  // namespace sparseserve
