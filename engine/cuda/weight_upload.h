// The model's weights on the device for the GPU forward pass (cuda_forward.h): quantized or float
// host matrices dequantized and stacked as bf16 device matrices, vectors concatenated as bf16.
#pragma once

#include <cuda_bf16.h>

#include <initializer_list>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cuda/cuda_check.h"

namespace sparseserve {

// Matrices with the same columns stacked by rows (Q|K|V, gate|up), dequantized, as one bf16 device
// matrix [Σ rows][cols]. InternalError when their columns differ.
kernels::cuda::DeviceBuffer<__nv_bfloat16> upload_rows(
    std::initializer_list<const kernels::cpu::WeightMatrix*> parts);

// Vectors concatenated (Q|K|V biases) as bf16; an empty buffer when all are empty.
kernels::cuda::DeviceBuffer<__nv_bfloat16> upload_vectors(
    std::initializer_list<const std::vector<float>*> parts);

}  // namespace sparseserve
