#include "kernels/cpu/matmul.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/errors.h"
#include "common/half.h"
#include "kernels/cpu/vec.h"

namespace sparseserve::kernels::cpu {

namespace {

constexpr int64_t kFusedMaxM = 8;  // at most this many rows of x use the fused kernels

inline const std::byte* row_ptr(const WeightMatrix& w, int64_t n) {
  return w.data + static_cast<size_t>(n) * w.row_stride;
}

inline float half_at(const std::byte* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_f32(h);
}

// Loads 8 unsigned bytes and widens them to 8 floats.
inline __m256 u8x8_to_ps(__m128i bytes8) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes8)); }
inline __m256 i8x8_to_ps(__m128i bytes8) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes8)); }

// Q4_1 block (20 bytes, 32 values): fp16 d, fp16 m, qs[16]; value j = d·(qs[j]&15) + m for j < 16,
// value j+16 = d·(qs[j]>>4) + m. Σ_j value_j·x_j = d·Σ q_j x_j + m·Σ x_j (xsum precomputed).
template <int MB>
void dot_rows_q4_1(const std::byte* wrow, int64_t cols, const float* x, int64_t ldx,
                   const float* xsum, int64_t nblocks_stride, float* out) {
  const int64_t nb = cols / 32;
  __m256 acc[MB];
  float macc[MB];
  for (int m = 0; m < MB; ++m) {
    acc[m] = _mm256_setzero_ps();
    macc[m] = 0.0f;
  }
  const __m128i low = _mm_set1_epi8(0x0f);
  for (int64_t b = 0; b < nb; ++b) {
    const std::byte* blk = wrow + b * 20;
    const float d = half_at(blk);
    const float mn = half_at(blk + 2);
    const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 4));
    const __m128i lo = _mm_and_si128(qs, low);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low);
    const __m256 q0 = u8x8_to_ps(lo);
    const __m256 q1 = u8x8_to_ps(_mm_srli_si128(lo, 8));
    const __m256 q2 = u8x8_to_ps(hi);
    const __m256 q3 = u8x8_to_ps(_mm_srli_si128(hi, 8));
    const __m256 vd = _mm256_set1_ps(d);
    for (int m = 0; m < MB; ++m) {
      const float* xb = x + m * ldx + b * 32;
      __m256 s = _mm256_mul_ps(q0, _mm256_loadu_ps(xb));
      s = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xb + 8), s);
      s = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xb + 16), s);
      s = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), s);
      acc[m] = _mm256_fmadd_ps(vd, s, acc[m]);
      macc[m] += mn * xsum[m * nblocks_stride + b];
    }
  }
  for (int m = 0; m < MB; ++m) out[m] = vec::hsum(acc[m]) + macc[m];
}

// Q8_0 block (34 bytes, 32 values): fp16 d, int8 qs[32]; value j = d·qs[j].
template <int MB>
void dot_rows_q8_0(const std::byte* wrow, int64_t cols, const float* x, int64_t ldx, float* out) {
  const int64_t nb = cols / 32;
  __m256 acc[MB];
  for (int m = 0; m < MB; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const std::byte* blk = wrow + b * 34;
    const __m256 vd = _mm256_set1_ps(half_at(blk));
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18));
    const __m256 q0 = i8x8_to_ps(a);
    const __m256 q1 = i8x8_to_ps(_mm_srli_si128(a, 8));
    const __m256 q2 = i8x8_to_ps(c);
    const __m256 q3 = i8x8_to_ps(_mm_srli_si128(c, 8));
    for (int m = 0; m < MB; ++m) {
      const float* xb = x + m * ldx + b * 32;
      __m256 s = _mm256_mul_ps(q0, _mm256_loadu_ps(xb));
      s = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xb + 8), s);
      s = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xb + 16), s);
      s = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), s);
      acc[m] = _mm256_fmadd_ps(vd, s, acc[m]);
    }
  }
  for (int m = 0; m < MB; ++m) out[m] = vec::hsum(acc[m]);
}

// fp16 / bf16 rows: widen 8 at a time.
template <int MB, bool kBf16>
void dot_rows_half(const std::byte* wrow, int64_t cols, const float* x, int64_t ldx, float* out) {
  __m256 acc[MB];
  for (int m = 0; m < MB; ++m) acc[m] = _mm256_setzero_ps();
  const auto* h = reinterpret_cast<const uint16_t*>(wrow);
  int64_t k = 0;
  for (; k + 8 <= cols; k += 8) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + k));
    __m256 wv;
    if constexpr (kBf16) {
      wv = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    } else {
      wv = _mm256_cvtph_ps(raw);
    }
    for (int m = 0; m < MB; ++m) acc[m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * ldx + k), acc[m]);
  }
  for (int m = 0; m < MB; ++m) {
    float s = vec::hsum(acc[m]);
    for (int64_t kk = k; kk < cols; ++kk) {
      const float wv = kBf16 ? bf16_to_f32(h[kk]) : fp16_to_f32(h[kk]);
      s += wv * x[m * ldx + kk];
    }
    out[m] = s;
  }
}

template <int MB>
void fused_block(const float* x, const WeightMatrix& w, float* y, int64_t ldy, const float* xsum,
                 int64_t nblocks) {
  const int64_t K = w.cols;
#pragma omp parallel
  {
    std::vector<float> rowbuf;
    float out[MB];
#pragma omp for schedule(static)
    for (int64_t n = 0; n < w.rows; ++n) {
      const std::byte* wr = row_ptr(w, n);
      switch (w.type) {
        case GgmlType::Q4_1: dot_rows_q4_1<MB>(wr, K, x, K, xsum, nblocks, out); break;
        case GgmlType::Q8_0: dot_rows_q8_0<MB>(wr, K, x, K, out); break;
        case GgmlType::F16: dot_rows_half<MB, false>(wr, K, x, K, out); break;
        case GgmlType::BF16: dot_rows_half<MB, true>(wr, K, x, K, out); break;
        case GgmlType::F32:
          for (int m = 0; m < MB; ++m) out[m] = vec::dot(reinterpret_cast<const float*>(wr), x + m * K, K);
          break;
        default:
          rowbuf.resize(static_cast<size_t>(K));
          dequantize_row(w.type, wr, rowbuf.data(), K);
          for (int m = 0; m < MB; ++m) out[m] = vec::dot(rowbuf.data(), x + m * K, K);
      }
      for (int m = 0; m < MB; ++m) y[m * ldy + n] = out[m];
    }
  }
}

void matmul_fused(const float* x, int64_t M, const WeightMatrix& w, float* y, int64_t ldy) {
  const int64_t K = w.cols;
  const int64_t nblocks = K / 32;
  std::vector<float> xsum;
  if (w.type == GgmlType::Q4_1) {  // per-block sums of x for the min term
    xsum.resize(static_cast<size_t>(M * nblocks));
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t b = 0; b < nblocks; ++b) {
        const float* xb = x + m * K + b * 32;
        float s = 0.0f;
        for (int j = 0; j < 32; ++j) s += xb[j];
        xsum[m * nblocks + b] = s;
      }
    }
  }
  int64_t m0 = 0;
  auto run = [&](auto mb_tag) {
    constexpr int MB = decltype(mb_tag)::value;
    const float* xs = xsum.empty() ? nullptr : xsum.data() + m0 * nblocks;
    fused_block<MB>(x + m0 * K, w, y + m0 * ldy, ldy, xs, nblocks);
    m0 += MB;
  };
  while (M - m0 >= 8) run(std::integral_constant<int, 8>{});
  while (M - m0 >= 4) run(std::integral_constant<int, 4>{});
  while (M - m0 >= 2) run(std::integral_constant<int, 2>{});
  while (M - m0 >= 1) run(std::integral_constant<int, 1>{});
}

void matmul_blas(const float* x, int64_t M, const WeightMatrix& w, float* y, int64_t ldy) {
  const int64_t K = w.cols;
  if (w.type == GgmlType::F32 && w.row_stride == static_cast<size_t>(K) * sizeof(float)) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(M), static_cast<int>(w.rows),
                static_cast<int>(K), 1.0f, x, static_cast<int>(K),
                reinterpret_cast<const float*>(w.data), static_cast<int>(K), 0.0f, y,
                static_cast<int>(ldy));
    return;
  }
  // Dequantize W in tiles of about 4 MiB of fp32, then sgemm into the matching columns of y.
  const int64_t tile = std::max<int64_t>(64, (int64_t{1} << 20) / std::max<int64_t>(K, 1));
  std::vector<float> wt(static_cast<size_t>(std::min(tile, w.rows) * K));
  for (int64_t n0 = 0; n0 < w.rows; n0 += tile) {
    const int64_t tn = std::min(tile, w.rows - n0);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < tn; ++r) dequantize_weight_row(w, n0 + r, wt.data() + r * K);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(M), static_cast<int>(tn),
                static_cast<int>(K), 1.0f, x, static_cast<int>(K), wt.data(), static_cast<int>(K), 0.0f,
                y + n0, static_cast<int>(ldy));
  }
}

}  // namespace

void dequantize_weight_row(const WeightMatrix& w, int64_t row, float* out) {
  dequantize_row(w.type, row_ptr(w, row), out, w.cols);
}

void matmul(const float* x, int64_t M, const WeightMatrix& w, float* y, const float* bias, int64_t ldy,
            Numerics numerics) {
  if (ldy == 0) ldy = w.rows;
  if (M <= 0 || w.rows == 0) return;
  if (ldy < w.rows) throw InvalidArgument("matmul: ldy smaller than the number of output features");
  if (w.cols % type_traits(w.type).block_elems != 0) {
    throw InvalidArgument("matmul: input width is not a multiple of the weight type's block size");
  }
  const bool fused_ok = w.type != GgmlType::Q4_1 && w.type != GgmlType::Q8_0 ? true : w.cols % 32 == 0;
  if (fused_ok && (M <= kFusedMaxM || numerics == Numerics::kBatchInvariant)) {
    matmul_fused(x, M, w, y, ldy);
  } else {
    matmul_blas(x, M, w, y, ldy);
  }
  if (bias != nullptr) {
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < w.rows; ++n) y[m * ldy + n] += bias[n];
    }
  }
}

}  // namespace sparseserve::kernels::cpu
