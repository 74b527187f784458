// libFuzzer harness for the GGUF reader: any input must either parse or throw ModelFileError.
// A parsed file must hand out views that lie inside the input: the first and last byte of every
// tensor are read and its first row is dequantized, so AddressSanitizer catches a bad view.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/errors.h"
#include "engine/gguf.h"
#include "kernels/cpu/ggml_types.h"

namespace {

// Walks a metadata value through every accessor; type mismatches throw InvalidArgument by contract.
void touch_value(const sparseserve::GgufValue& v) {
  try {
    (void)v.as_int();
  } catch (const sparseserve::InvalidArgument&) {
  }
  try {
    (void)v.as_float();
  } catch (const sparseserve::InvalidArgument&) {
  }
  try {
    (void)v.as_bool();
  } catch (const sparseserve::InvalidArgument&) {
  }
  try {
    (void)v.as_string().size();
  } catch (const sparseserve::InvalidArgument&) {
  }
  try {
    for (const auto& item : v.as_array()) touch_value(item);
  } catch (const sparseserve::InvalidArgument&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sparseserve;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const GgufFile g = GgufFile::parse(bytes, "fuzz-input");
    for (const auto& [key, value] : g.metadata()) touch_value(value);
    volatile std::byte sink{};
    for (const TensorView& t : g.tensors()) {
      if (g.find_tensor(t.name) != &t) __builtin_trap();
      if (t.nbytes == 0) continue;
      sink = t.data[0];
      sink = t.data[t.nbytes - 1];
      const int64_t cols = t.cols();
      if (kernels::row_bytes(t.type, cols) > t.nbytes) __builtin_trap();
      if (!kernels::type_traits(t.type).dequantizable) continue;
      std::vector<float> row(static_cast<size_t>(cols));
      kernels::dequantize_row(t.type, t.data, row.data(), cols);
    }
    (void)sink;
  } catch (const ModelFileError&) {
  }
  return 0;
}
