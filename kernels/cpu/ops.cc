#include "kernels/cpu/ops.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/vec.h"

namespace sparseserve::kernels::cpu {

namespace {

inline float inv_rms(const float* x, int64_t width, float eps) {
  const float ss = vec::dot(x, x, width);
  return 1.0f / std::sqrt(ss / static_cast<float>(width) + eps);
}

inline void scale_by_weight(const float* x, const float* weight, float s, float* out, int64_t width) {
  for (int64_t i = 0; i < width; ++i) out[i] = x[i] * s * weight[i];
}

}  // namespace

void rmsnorm(const float* x, const float* weight, float* out, int64_t rows, int64_t width, float eps) {
#pragma omp parallel for schedule(static) if (rows > 4)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * width;
    scale_by_weight(xr, weight, inv_rms(xr, width, eps), out + r * width, width);
  }
}

void add_rmsnorm(float* residual, const float* delta, const float* weight, float* out, int64_t rows,
                 int64_t width, float eps) {
#pragma omp parallel for schedule(static) if (rows > 4)
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = residual + r * width;
    const float* dr = delta + r * width;
    for (int64_t i = 0; i < width; ++i) xr[i] += dr[i];
    scale_by_weight(xr, weight, inv_rms(xr, width, eps), out + r * width, width);
  }
}

void add_inplace(float* x, const float* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void silu_mul(const float* gate_up, float* out, int64_t rows, int64_t width) {
#pragma omp parallel for schedule(static) if (rows > 4)
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate_up + r * 2 * width;
    const float* u = g + width;
    float* o = out + r * width;
    for (int64_t i = 0; i < width; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void rope(float* x, int64_t row_stride, const int32_t* positions, int64_t rows, int64_t n_heads, int64_t head_dim,
          int64_t rope_dim, const float* inv_freq, bool interleaved_pairs) {
  const int64_t half = rope_dim / 2;
#pragma omp parallel if (rows > 4)
  {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const double pos = positions[r];
      for (int64_t i = 0; i < half; ++i) {
        const double angle = pos * static_cast<double>(inv_freq[i]);
        cs[i] = static_cast<float>(std::cos(angle));
        sn[i] = static_cast<float>(std::sin(angle));
      }
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x + r * row_stride + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const int64_t a = interleaved_pairs ? 2 * i : i;
          const int64_t b = interleaved_pairs ? 2 * i + 1 : i + half;
          const float x0 = v[a], x1 = v[b];
          v[a] = x0 * cs[i] - x1 * sn[i];
          v[b] = x0 * sn[i] + x1 * cs[i];
        }
      }
    }
  }
}

void softmax(float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  vec::scale(1.0f / sum, x, n);
}

}  // namespace sparseserve::kernels::cpu
