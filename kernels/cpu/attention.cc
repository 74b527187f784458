#include "kernels/cpu/attention.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec.h"

namespace sparseserve::kernels::cpu {

void attention_causal(const float* q, int64_t q_row_stride, const float* k, const float* v, float* out, int64_t T,
                      int64_t start_pos, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim) {
  const int64_t group = n_heads / n_kv_heads;
  const int64_t kv_stride = n_kv_heads * head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
#pragma omp parallel
  {
    std::vector<float> scores(static_cast<size_t>(start_pos + T));
#pragma omp for schedule(dynamic, 4) collapse(2)
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < n_heads; ++h) {
        const int64_t n_keys = start_pos + t + 1;
        const int64_t kvh = h / group;
        const float* qh = q + t * q_row_stride + h * head_dim;
        for (int64_t j = 0; j < n_keys; ++j) {
          scores[j] = vec::dot(qh, k + j * kv_stride + kvh * head_dim, head_dim) * scale;
        }
        softmax(scores.data(), n_keys);
        float* o = out + (t * n_heads + h) * head_dim;
        std::memset(o, 0, sizeof(float) * static_cast<size_t>(head_dim));
        for (int64_t j = 0; j < n_keys; ++j) vec::axpy(scores[j], v + j * kv_stride + kvh * head_dim, o, head_dim);
      }
    }
  }
}

}  // namespace sparseserve::kernels::cpu
