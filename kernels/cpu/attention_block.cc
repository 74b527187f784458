#include "kernels/cpu/attention_block.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/block_sparse.h"

namespace sparseserve::kernels::cpu {

namespace {

constexpr int64_t kQueryBlock = 64;

bool allowed(const AttentionMask& m, const uint8_t* block_row, int64_t t, int64_t j) {
  if (j > t) return false;
  switch (m.kind) {
    case AttentionMask::Kind::kCausal: return true;
    case AttentionMask::Kind::kBand: return j < m.sink || t - j < m.local;
    case AttentionMask::Kind::kBlocks: return block_row[j / m.block_tokens] != 0;
  }
  return false;
}

}  // namespace

void attend_block(const float* q, int64_t q_row_stride, int32_t group, int64_t n, int64_t pos0, const float* k,
                  const float* v, int64_t kv_stride, const int64_t* key_pos, int64_t L, const AttentionMask& mask,
                  const BlockMask* blocks, int64_t D, float scale, float* out, int64_t out_row_stride) {
  std::vector<float> qb, s, ob;
  for (int64_t b0 = 0; b0 < n; b0 += kQueryBlock) {
    const int64_t bn = std::min(kQueryBlock, n - b0);
    const int64_t t_max = pos0 + b0 + bn - 1;
    // Keys that can matter to this block: positions ≤ t_max (keys are ascending).
    int64_t lb = L;
    if (key_pos == nullptr) {
      lb = std::min(L, t_max + 1);
    } else {
      lb = std::upper_bound(key_pos, key_pos + L, t_max) - key_pos;
    }
    const int64_t M = bn * group;
    qb.resize(static_cast<size_t>(M * D));
    for (int64_t i = 0; i < bn; ++i) {
      for (int32_t g = 0; g < group; ++g) {
        std::memcpy(qb.data() + (i * group + g) * D, q + (b0 + i) * q_row_stride + g * D, sizeof(float) * static_cast<size_t>(D));
      }
    }
    ob.assign(static_cast<size_t>(M * D), 0.0f);
    if (lb > 0) {
      s.resize(static_cast<size_t>(M * lb));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(M), static_cast<int>(lb), static_cast<int>(D),
                  scale, qb.data(), static_cast<int>(D), k, static_cast<int>(kv_stride), 0.0f, s.data(), static_cast<int>(lb));
      for (int64_t i = 0; i < bn; ++i) {
        const int64_t t = pos0 + b0 + i;
        const uint8_t* brow = mask.kind == AttentionMask::Kind::kBlocks ? blocks->row(t / blocks->block_tokens) : nullptr;
        AttentionMask m = mask;
        if (brow != nullptr) m.block_tokens = blocks->block_tokens;
        for (int32_t g = 0; g < group; ++g) {
          float* row = s.data() + (i * group + g) * lb;
          float mx = -INFINITY;
          for (int64_t r = 0; r < lb; ++r) {
            const int64_t j = key_pos == nullptr ? r : key_pos[r];
            if (!allowed(m, brow, t, j)) row[r] = -INFINITY;
            mx = std::max(mx, row[r]);
          }
          if (mx == -INFINITY) {  // nothing allowed: zero weights
            std::fill(row, row + lb, 0.0f);
            continue;
          }
          float sum = 0.0f;
          for (int64_t r = 0; r < lb; ++r) sum += (row[r] = std::exp(row[r] - mx));
          const float inv = 1.0f / sum;
          for (int64_t r = 0; r < lb; ++r) row[r] *= inv;
        }
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(M), static_cast<int>(D), static_cast<int>(lb),
                  1.0f, s.data(), static_cast<int>(lb), v, static_cast<int>(kv_stride), 0.0f, ob.data(), static_cast<int>(D));
    }
    for (int64_t i = 0; i < bn; ++i) {
      for (int32_t g = 0; g < group; ++g) {
        std::memcpy(out + (b0 + i) * out_row_stride + g * D, ob.data() + (i * group + g) * D, sizeof(float) * static_cast<size_t>(D));
      }
    }
  }
}

}  // namespace sparseserve::kernels::cpu
