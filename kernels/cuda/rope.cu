// RoPE kernel. How this works: one thread block per row. The block first computes cos/sin of the
// row's rope_dim/2 angles into shared memory (double product and range reduction, fp32 sincos), then
// its threads rotate the pairs of every head. With 16-byte alignment (see vec below) a thread moves
// one 16-byte unit: interleaved pairs → 8 adjacent values (4 pairs); half pairs → 8 values of each half
// (8 pairs, two loads); otherwise one pair per thread.
#include "kernels/cuda/rope.h"

#include "kernels/cuda/cuda_check.h"

namespace sparseserve::kernels::cuda {

namespace {

constexpr int kThreads = 128;
constexpr double kTwoPi = 6.283185307179586476925286766559;

__device__ __forceinline__ void rotate(float& a, float& b, float c, float s) {
  const float x0 = a, x1 = b;
  a = x0 * c - x1 * s;
  b = x0 * s + x1 * c;
}

__global__ void __launch_bounds__(kThreads)
    rope_kernel(__nv_bfloat16* x, int64_t row_stride, const int32_t* __restrict__ positions, int n_heads,
                int head_dim, int half, const float* __restrict__ inv_freq, bool interleaved, bool vec) {
  extern __shared__ float trig[];  // cos [half] then sin [half]
  float* cs = trig;
  float* sn = trig + half;
  const int64_t row = blockIdx.x;
  const double pos = positions[row];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const double angle = pos * static_cast<double>(inv_freq[i]);  // exact: 24-bit × 31-bit < 53 bits
    const double turns = rint(angle * (1.0 / kTwoPi));
    const float reduced = static_cast<float>(fma(-turns, kTwoPi, angle));  // in [-π, π]
    sincosf(reduced, &sn[i], &cs[i]);
  }
  __syncthreads();

  __nv_bfloat16* xr = x + row * row_stride;
  if (vec) {
    // interleaved: a unit is 8 values (pairs 4j..4j+3); half: 8 pairs 8j..8j+7 from both halves.
    const int units = interleaved ? 2 * half / 8 : half / 8;
    for (int u = threadIdx.x; u < n_heads * units; u += blockDim.x) {
      const int h = u / units, j = u % units;
      __nv_bfloat16* v = xr + static_cast<int64_t>(h) * head_dim;
      if (interleaved) {
        auto* p = reinterpret_cast<uint4*>(v + 8 * j);
        float f[8];
        bf16x8_to_float(*p, f);
#pragma unroll
        for (int k = 0; k < 4; ++k) rotate(f[2 * k], f[2 * k + 1], cs[4 * j + k], sn[4 * j + k]);
        *p = float_to_bf16x8(f);
      } else {
        auto* pa = reinterpret_cast<uint4*>(v + 8 * j);
        auto* pb = reinterpret_cast<uint4*>(v + half + 8 * j);
        float a[8], b[8];
        bf16x8_to_float(*pa, a);
        bf16x8_to_float(*pb, b);
#pragma unroll
        for (int k = 0; k < 8; ++k) rotate(a[k], b[k], cs[8 * j + k], sn[8 * j + k]);
        *pa = float_to_bf16x8(a);
        *pb = float_to_bf16x8(b);
      }
    }
  } else {
    for (int p = threadIdx.x; p < n_heads * half; p += blockDim.x) {
      const int h = p / half, i = p % half;
      __nv_bfloat16* v = xr + static_cast<int64_t>(h) * head_dim;
      const int ia = interleaved ? 2 * i : i;
      const int ib = interleaved ? 2 * i + 1 : i + half;
      float a = __bfloat162float(v[ia]), b = __bfloat162float(v[ib]);
      rotate(a, b, cs[i], sn[i]);
      v[ia] = __float2bfloat16_rn(a);
      v[ib] = __float2bfloat16_rn(b);
    }
  }
}

}  // namespace

void rope(__nv_bfloat16* x, int64_t row_stride, const int32_t* positions, int64_t rows, int64_t n_heads,
          int64_t head_dim, int64_t rope_dim, const float* inv_freq, bool interleaved_pairs, cudaStream_t stream,
          std::source_location loc) {
  check(rows >= 0 && rows <= INT32_MAX, "rope: rows must be in [0, 2^31)", loc);
  check(n_heads >= 1 && head_dim >= 1 && n_heads * head_dim <= (1 << 20), "rope: bad n_heads / head_dim", loc);
  check(rope_dim >= 2 && rope_dim % 2 == 0 && rope_dim <= head_dim && rope_dim <= 8192,
        "rope: rope_dim must be even, in [2, min(head_dim, 8192)]", loc);
  check(row_stride >= n_heads * head_dim, "rope: row_stride < n_heads * head_dim", loc);
  if (rows == 0) return;
  check(x != nullptr && positions != nullptr && inv_freq != nullptr, "rope: null pointer", loc);
  const int64_t half = rope_dim / 2;
  const bool vec = is_aligned16(x) && row_stride % 8 == 0 && head_dim % 8 == 0 &&
                   (interleaved_pairs ? rope_dim % 8 == 0 : half % 8 == 0);
  const size_t smem = 2 * static_cast<size_t>(half) * sizeof(float);
  rope_kernel<<<static_cast<unsigned>(rows), kThreads, smem, stream>>>(
      x, row_stride, positions, static_cast<int>(n_heads), static_cast<int>(head_dim), static_cast<int>(half),
      inv_freq, interleaved_pairs, vec);
  check_cuda(cudaGetLastError(), "rope_kernel launch", loc);
}

}  // namespace sparseserve::kernels::cuda
