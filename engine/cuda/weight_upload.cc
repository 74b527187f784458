// The model's weights as bf16 device matrices (weight_upload.h).
#include "engine/cuda/weight_upload.h"

#include <cstdint>
#include <span>
#include <vector>

#include "common/errors.h"
#include "common/half.h"

namespace sparseserve {

// Matrices with the same columns stacked by rows (Q|K|V, gate|up), dequantized, as one bf16 device
// matrix [Σ rows][cols]. Rows are converted in parallel (OpenMP): a Llama-3-8B holds 7.5e9 weights.
kernels::cuda::DeviceBuffer<__nv_bfloat16> upload_rows(
    std::initializer_list<const kernels::cpu::WeightMatrix*> parts) {
  const int64_t cols = (*parts.begin())->cols;
  int64_t rows = 0;
  for (const auto* p : parts) {
    check(p->cols == cols, "CudaForward: stacked weights differ in columns");
    rows += p->rows;
  }
  std::vector<uint16_t> host(static_cast<size_t>(rows * cols));
  int64_t first = 0;  // the part's first row in `host`
  for (const auto* p : parts) {
#pragma omp parallel
    {
      std::vector<float> row(static_cast<size_t>(cols));
#pragma omp for schedule(static)
      for (int64_t i = 0; i < p->rows; ++i) {
        kernels::cpu::dequantize_weight_row(*p, i, row.data());
        uint16_t* out = host.data() + static_cast<size_t>((first + i) * cols);
        for (int64_t c = 0; c < cols; ++c) out[c] = f32_to_bf16(row[static_cast<size_t>(c)]);
      }
    }
    first += p->rows;
  }
  return kernels::cuda::DeviceBuffer<__nv_bfloat16>(std::span<const uint16_t>(host));
}

// Vectors concatenated (Q|K|V biases) as bf16; an empty buffer when all are empty.
kernels::cuda::DeviceBuffer<__nv_bfloat16> upload_vectors(
    std::initializer_list<const std::vector<float>*> parts) {
  std::vector<uint16_t> host;
  for (const auto* p : parts) {
    for (float x : *p) host.push_back(f32_to_bf16(x));
  }
  if (host.empty()) return {};
  return kernels::cuda::DeviceBuffer<__nv_bfloat16>(std::span<const uint16_t>(host));
}

}  // namespace sparseserve
