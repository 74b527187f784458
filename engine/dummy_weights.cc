#include "engine/dummy_weights.h"

#include <cmath>
#include <cstring>

#include "common/errors.h"
#include "common/half.h"

namespace sparseserve {

namespace {

// splitmix64's finaliser: a well-mixed 64-bit value of a counter.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t name_hash(const std::string& name) {  // FNV-1a
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return h;
}

}  // namespace

const TensorView& DummyTensors::make(const std::string& name, const std::vector<int64_t>& shape, DummyFill fill) {
  int64_t n = 1;
  for (const int64_t d : shape) {
    if (d <= 0) throw InvalidArgument("dummy tensor '" + name + "': every dimension must be positive");
    n *= d;
  }
  const int64_t cols = shape.empty() ? 1 : shape.back();
  // Not zero-filled first: every element is written below (by the threads that fill it).
  std::unique_ptr<std::byte[]> buffer(new std::byte[static_cast<size_t>(n) * sizeof(uint16_t)]);
  auto* out = reinterpret_cast<uint16_t*>(buffer.get());
  // Uniform on [-a, a] has standard deviation a / sqrt(3).
  const float a = fill == DummyFill::kMatrix ? std::sqrt(3.0f / static_cast<float>(cols)) : 0.02f * std::sqrt(3.0f);
  const uint64_t key = mix(seed_ ^ name_hash(name));
  if (fill == DummyFill::kGain) {
    const uint16_t one = f32_to_bf16(1.0f);
    for (int64_t i = 0; i < n; ++i) out[i] = one;
  } else {
    // One hash per 4 elements, 16 bits each: a uniform on 65536 levels (BF16 keeps 8 bits).
    const int64_t groups = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (n > (1 << 20))
    for (int64_t g = 0; g < groups; ++g) {
      const uint64_t h = mix(key + static_cast<uint64_t>(g));
      for (int64_t j = 0; j < 4 && 4 * g + j < n; ++j) {
        const float u = (static_cast<float>((h >> (16 * j)) & 0xffffu) + 0.5f) * (1.0f / 65536.0f);  // in (0, 1)
        out[4 * g + j] = f32_to_bf16((2.0f * u - 1.0f) * a);
      }
    }
  }
  TensorView& v = views_.emplace_back();
  v.name = name;
  v.type = kernels::GgmlType::BF16;
  v.shape = shape;
  v.data = buffer.get();
  v.nbytes = static_cast<size_t>(n) * sizeof(uint16_t);
  buffers_.push_back(std::move(buffer));
  return v;
}

}  // namespace sparseserve
