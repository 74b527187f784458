// RMSNorm kernels. How this works: one thread block per row. Pass 1 reads the row (and, fused,
// adds delta, rounds to bf16 and stores the new residual) while summing squares in fp32; a block
// reduction gives 1/rms; pass 2 re-reads the row (from L1/L2: ≤ tens of KB) and writes the scaled
// output. Each thread re-reads exactly the elements it wrote in pass 1, so the fused variant needs no
// extra barrier, and out may alias the input (all reads of pass 1 finish at the reduction barrier).
#include "kernels/cuda/norm.h"

#include <algorithm>

#include "kernels/cuda/cuda_check.h"

namespace sparseserve::kernels::cuda {

namespace {

constexpr int kMaxThreads = 1024;

// kAdd: x is the residual (read-write) and delta is added first; otherwise x is read only.
template <bool kAdd>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_kernel(__nv_bfloat16* x, const __nv_bfloat16* delta, const __nv_bfloat16* __restrict__ weight,
                   __nv_bfloat16* out, int64_t width, float eps, bool vec) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  __nv_bfloat16* xr = x + row * width;
  const __nv_bfloat16* dr = kAdd ? delta + row * width : nullptr;
  __nv_bfloat16* orow = out + row * width;

  float ss = 0.0f;
  if (vec) {
    auto* x8 = reinterpret_cast<uint4*>(xr);
    const auto* d8 = reinterpret_cast<const uint4*>(dr);
    for (int64_t j = threadIdx.x; j < width / 8; j += blockDim.x) {
      uint4 raw = x8[j];
      float f[8];
      bf16x8_to_float(raw, f);
      if constexpr (kAdd) {
        float d[8];
        bf16x8_to_float(d8[j], d);
#pragma unroll
        for (int i = 0; i < 8; ++i) f[i] += d[i];
        raw = float_to_bf16x8(f);
        x8[j] = raw;
        bf16x8_to_float(raw, f);  // the norm sees the rounded residual
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) ss += f[i] * f[i];
    }
  } else {
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
      float f = __bfloat162float(xr[j]);
      if constexpr (kAdd) {
        const __nv_bfloat16 z = __float2bfloat16_rn(f + __bfloat162float(dr[j]));
        xr[j] = z;
        f = __bfloat162float(z);
      }
      ss += f * f;
    }
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(width) + eps);

  if (vec) {
    const auto* x8 = reinterpret_cast<const uint4*>(xr);
    const auto* w8 = reinterpret_cast<const uint4*>(weight);
    auto* o8 = reinterpret_cast<uint4*>(orow);
    for (int64_t j = threadIdx.x; j < width / 8; j += blockDim.x) {
      float f[8], w[8];
      bf16x8_to_float(x8[j], f);
      bf16x8_to_float(w8[j], w);
#pragma unroll
      for (int i = 0; i < 8; ++i) f[i] = f[i] * inv * w[i];
      o8[j] = float_to_bf16x8(f);
    }
  } else {
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
      orow[j] = __float2bfloat16_rn(__bfloat162float(xr[j]) * inv * __bfloat162float(weight[j]));
    }
  }
}

template <bool kAdd>
void launch(__nv_bfloat16* x, const __nv_bfloat16* delta, const __nv_bfloat16* weight, __nv_bfloat16* out,
            int64_t rows, int64_t width, float eps, cudaStream_t stream, const std::source_location& loc) {
  check(rows >= 0 && rows <= INT32_MAX && width >= 1, "rmsnorm: rows must be in [0, 2^31) and width ≥ 1", loc);
  check(eps >= 0.0f, "rmsnorm: eps must be ≥ 0", loc);
  if (rows == 0) return;
  check(x != nullptr && weight != nullptr && out != nullptr && (!kAdd || delta != nullptr),
        "rmsnorm: null pointer", loc);
  // out may be x itself (rmsnorm) or delta itself (add_rmsnorm): each row is read whole before it is
  // written. Any other overlap lets one row's writes reach rows other blocks still read.
  const auto bytes = static_cast<size_t>(rows * width) * 2;
  check(!ranges_overlap(out, bytes, x, bytes) || (!kAdd && out == x),
        kAdd ? "add_rmsnorm: out overlaps residual" : "rmsnorm: out overlaps x without being x", loc);
  check(!kAdd || !ranges_overlap(out, bytes, delta, bytes) || out == delta,
        "add_rmsnorm: out overlaps delta without being delta", loc);
  check(!ranges_overlap(out, bytes, weight, static_cast<size_t>(width) * 2), "rmsnorm: out overlaps weight", loc);
  const bool vec = width % 8 == 0 && is_aligned16(x) && is_aligned16(weight) && is_aligned16(out) &&
                   (!kAdd || is_aligned16(delta));
  const int64_t units = vec ? width / 8 : width;
  const int threads = static_cast<int>(std::clamp<int64_t>((units + 31) / 32 * 32, 32, kMaxThreads));
  rmsnorm_kernel<kAdd><<<static_cast<unsigned>(rows), threads, 0, stream>>>(x, delta, weight, out, width, eps, vec);
  check_cuda(cudaGetLastError(), "rmsnorm_kernel launch", loc);
}

}  // namespace

void rmsnorm(const __nv_bfloat16* x, const __nv_bfloat16* weight, __nv_bfloat16* out, int64_t rows, int64_t width,
             float eps, cudaStream_t stream, std::source_location loc) {
  // kAdd = false never writes x: the const_cast only shares the kernel signature.
  launch<false>(const_cast<__nv_bfloat16*>(x), nullptr, weight, out, rows, width, eps, stream, loc);
}

void add_rmsnorm(__nv_bfloat16* residual, const __nv_bfloat16* delta, const __nv_bfloat16* weight,
                 __nv_bfloat16* out, int64_t rows, int64_t width, float eps, cudaStream_t stream,
                 std::source_location loc) {
  launch<true>(residual, delta, weight, out, rows, width, eps, stream, loc);
}

}  // namespace sparseserve::kernels::cuda
