// Tensor element types as GGUF numbers them (ggml_type), their block layouts, and dequantization.
// A quantized row of n elements is n / block_elems consecutive blocks of block_bytes each.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sparseserve::kernels {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

struct TypeTraits {
  std::string_view name;  // "Q4_1", as gguf-py names it
  int64_t block_elems;    // elements per block (1 for plain types)
  size_t block_bytes;     // bytes per block
  bool dequantizable;     // dequantize_row supports it
};

// True for a type number this build knows the layout of.
bool is_known_type(uint32_t raw);
// Traits of a known type; throws InvalidArgument for an unknown one.
const TypeTraits& type_traits(GgmlType type);
// Bytes of n elements; throws InvalidArgument when n is not a multiple of the block size.
size_t row_bytes(GgmlType type, int64_t n);

// Dequantizes n elements (n a multiple of block_elems) from src (row_bytes(type, n) bytes) into dst.
// Results are bit-identical to gguf-py's numpy dequantizer (fp16 scales widened to f32, then the
// same f32 arithmetic). Throws InvalidArgument for a type that cannot be dequantized.
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

}  // namespace sparseserve::kernels
