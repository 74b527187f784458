// A read-only view of one weight tensor inside a mapped model file (GGUF or safetensors).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/ggml_types.h"

namespace sparseserve {

struct TensorView {
  std::string name;              // name as stored in the file
  kernels::GgmlType type;        // element type (safetensors F32/F16/BF16 map to the same enum)
  std::vector<int64_t> shape;    // outermost first (PyTorch order): a linear weight is {out, in}
  const std::byte* data = nullptr;  // row-major; a row of shape.back() elements is row_bytes() long
  size_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t rows() const { return shape.empty() ? 1 : numel() / shape.back(); }
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
};

}  // namespace sparseserve
