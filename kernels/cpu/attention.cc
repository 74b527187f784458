#include "kernels/cpu/attention.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/attention_block.h"
#include "kernels/cpu/span_attention.h"

namespace sparseserve::kernels::cpu {

void attention_causal(const float* q, int64_t q_row_stride, const float* k, const float* v, float* out, int64_t T,
                      int64_t start_pos, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, Numerics numerics) {
  const int64_t group = n_heads / n_kv_heads;
  const int64_t kv_stride = n_kv_heads * head_dim;
  const int64_t q_dim = n_heads * head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  if (numerics == Numerics::kFast && T >= kBlockedMinRows) {  // prefill: query blocks of one KV head's group against all keys
    const int64_t nblocks = (T + 63) / 64;
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
    for (int64_t kvh = 0; kvh < n_kv_heads; ++kvh) {
      for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t r0 = b * 64, rn = std::min<int64_t>(64, T - r0);
        attend_block(q + r0 * q_row_stride + kvh * group * head_dim, q_row_stride, static_cast<int32_t>(group), rn,
                     start_pos + r0, k + kvh * head_dim, v + kvh * head_dim, kv_stride, nullptr, start_pos + T,
                     AttentionMask::causal(), nullptr, head_dim, scale, out + r0 * q_dim + kvh * group * head_dim, q_dim);
      }
    }
    return;
  }
#pragma omp parallel
  {
    std::vector<float> scratch;
#pragma omp for schedule(dynamic, 4) collapse(2)
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < n_heads; ++h) {
        const int64_t kvh = h / group;
        const KeySpan all{k + kvh * head_dim, v + kvh * head_dim, 0, static_cast<int32_t>(start_pos + T),
                          static_cast<int32_t>(kv_stride)};
        attend_spans(q + t * q_row_stride + h * head_dim, start_pos + t, std::span(&all, 1), AttentionMask::causal(),
                     head_dim, scale, out + (t * n_heads + h) * head_dim, scratch);
      }
    }
  }
}

}  // namespace sparseserve::kernels::cpu
