#include "engine/rope_freqs.h"

#include <cmath>
#include <numbers>

namespace sparseserve {

std::vector<float> rope_inv_freq(const ModelConfig& c, const std::vector<float>& freq_factors) {
  const int64_t half = c.rope_dim / 2;
  std::vector<float> out(static_cast<size_t>(half));
  const RopeScaling& s = c.rope_scaling;
  for (int64_t i = 0; i < half; ++i) {
    double f = std::pow(static_cast<double>(c.rope_theta), -2.0 * static_cast<double>(i) / static_cast<double>(c.rope_dim));
    switch (s.kind) {
      case RopeScaling::Kind::kNone: break;
      case RopeScaling::Kind::kLinear: f /= s.factor; break;
      case RopeScaling::Kind::kLlama3: {
        // Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
        const double orig = static_cast<double>(s.original_max_position);
        const double wavelen = 2.0 * std::numbers::pi / f;
        const double low_wavelen = orig / s.low_freq_factor;
        const double high_wavelen = orig / s.high_freq_factor;
        if (wavelen > low_wavelen) {
          f /= s.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          f = (1.0 - smooth) * f / s.factor + smooth * f;
        }
        break;
      }
    }
    if (static_cast<size_t>(i) < freq_factors.size()) f /= static_cast<double>(freq_factors[i]);
    out[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return out;
}

}  // namespace sparseserve
