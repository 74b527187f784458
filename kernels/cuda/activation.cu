// SiLU-and-multiply and embedding gather. How this works: a grid-stride loop over (row, unit) pairs,
// a unit being 8 elements (one 16-byte load per operand) on the aligned path or 1 element otherwise;
// the row/unit split keeps each row's units adjacent so a warp's accesses are contiguous.
#include "kernels/cuda/activation.h"

#include <algorithm>
#include <string>

#include "kernels/cuda/cuda_check.h"

namespace sparseserve::kernels::cuda {

namespace {

constexpr int kThreads = 256;

// Enough blocks to fill the GPU several times over; the kernels loop over the rest.
unsigned grid_for(int64_t work_items) {
  return static_cast<unsigned>(std::clamp<int64_t>((work_items + kThreads - 1) / kThreads, 1, 1 << 16));
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

__global__ void __launch_bounds__(kThreads)
    silu_mul_kernel(const __nv_bfloat16* __restrict__ gate_up, __nv_bfloat16* __restrict__ out, int64_t rows,
                    int64_t width, bool vec) {
  const int64_t units = vec ? width / 8 : width;
  const int64_t total = rows * units;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = t / units, j = t % units;
    const __nv_bfloat16* g = gate_up + r * 2 * width;
    const __nv_bfloat16* u = g + width;
    __nv_bfloat16* o = out + r * width;
    if (vec) {
      float gf[8], uf[8];
      bf16x8_to_float(reinterpret_cast<const uint4*>(g)[j], gf);
      bf16x8_to_float(reinterpret_cast<const uint4*>(u)[j], uf);
#pragma unroll
      for (int i = 0; i < 8; ++i) gf[i] = silu(gf[i]) * uf[i];
      reinterpret_cast<uint4*>(o)[j] = float_to_bf16x8(gf);
    } else {
      o[j] = __float2bfloat16_rn(silu(__bfloat162float(g[j])) * __bfloat162float(u[j]));
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    embedding_gather_kernel(const __nv_bfloat16* __restrict__ table, int64_t vocab, int64_t width,
                            const int32_t* __restrict__ ids, int64_t rows, __nv_bfloat16* __restrict__ out,
                            bool vec) {
  const int64_t units = vec ? width / 8 : width;
  const int64_t total = rows * units;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = t / units, j = t % units;
    const int32_t id = ids[r];
    const bool ok = id >= 0 && id < vocab;
    if (vec) {
      const uint4 nan8 = make_uint4(0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u);
      reinterpret_cast<uint4*>(out + r * width)[j] =
          ok ? reinterpret_cast<const uint4*>(table + id * width)[j] : nan8;
    } else {
      out[r * width + j] = ok ? table[id * width + j] : __ushort_as_bfloat16(0x7fc0);
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    widen_bf16_kernel(const __nv_bfloat16* __restrict__ in, float* __restrict__ out, int64_t n) {
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < n; t += int64_t{gridDim.x} * blockDim.x) {
    out[t] = __bfloat162float(in[t]);
  }
}

}  // namespace

void silu_mul(const __nv_bfloat16* gate_up, __nv_bfloat16* out, int64_t rows, int64_t width, cudaStream_t stream,
              std::source_location loc) {
  check(rows >= 0 && width >= 1, "silu_mul: rows must be ≥ 0 and width ≥ 1", loc);
  if (rows == 0) return;
  check(gate_up != nullptr && out != nullptr, "silu_mul: null pointer", loc);
  const auto out_bytes = static_cast<size_t>(rows * width) * 2;
  check(!ranges_overlap(out, out_bytes, gate_up, 2 * out_bytes), "silu_mul: out overlaps gate_up", loc);
  const bool vec = width % 8 == 0 && is_aligned16(gate_up) && is_aligned16(out);
  const int64_t items = rows * (vec ? width / 8 : width);
  silu_mul_kernel<<<grid_for(items), kThreads, 0, stream>>>(gate_up, out, rows, width, vec);
  check_cuda(cudaGetLastError(), "silu_mul_kernel launch", loc);
}

void check_token_ids(std::span<const int32_t> ids, int64_t vocab) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      throw InvalidArgument("token id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                            " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    }
  }
}

void embedding_gather(const __nv_bfloat16* table, int64_t vocab, int64_t width, const int32_t* ids, int64_t rows,
                      __nv_bfloat16* out, cudaStream_t stream, std::source_location loc) {
  check(rows >= 0 && vocab >= 1 && vocab <= INT32_MAX && width >= 1, "embedding_gather: bad shape", loc);
  if (rows == 0) return;
  check(table != nullptr && ids != nullptr && out != nullptr, "embedding_gather: null pointer", loc);
  const bool vec = width % 8 == 0 && is_aligned16(table) && is_aligned16(out);
  const int64_t items = rows * (vec ? width / 8 : width);
  embedding_gather_kernel<<<grid_for(items), kThreads, 0, stream>>>(table, vocab, width, ids, rows, out, vec);
  check_cuda(cudaGetLastError(), "embedding_gather_kernel launch", loc);
}

void widen_bf16(const __nv_bfloat16* in, float* out, int64_t n, cudaStream_t stream, std::source_location loc) {
  check(n >= 0, "widen_bf16: n must be ≥ 0", loc);
  if (n == 0) return;
  check(in != nullptr && out != nullptr, "widen_bf16: null pointer", loc);
  check(!ranges_overlap(out, static_cast<size_t>(n) * 4, in, static_cast<size_t>(n) * 2), "widen_bf16: out overlaps in",
        loc);
  widen_bf16_kernel<<<grid_for(n), kThreads, 0, stream>>>(in, out, n);
  check_cuda(cudaGetLastError(), "widen_bf16_kernel launch", loc);
}

}  // namespace sparseserve::kernels::cuda
