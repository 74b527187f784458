// Helpers for the CUDA op tests (tests/gpu/*_test.cu): skipping without a device, fresh random
// inputs with a reproducible seed, bf16 data kept both as bits (for the device) and as the exact
// floats they hold (for the CPU twin), poisoned outputs and tolerance checks.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/half.h"
#include "kernels/cuda/cuda_check.h"

namespace sparseserve::gpu_test {

using kernels::cuda::DeviceBuffer;
using bf16 = __nv_bfloat16;

// Skips the test (cleanly, for CI machines without a GPU) when no CUDA device is present.
#define SKIP_WITHOUT_GPU()                                            \
  do {                                                                \
    if (::sparseserve::kernels::cuda::cuda_device_count() == 0) {     \
      GTEST_SKIP() << "no CUDA device";                               \
    }                                                                 \
  } while (0)

// Fresh inputs every run; SPARSESERVE_TEST_SEED=<n> replays a run. Tests print the seed on failure
// (SCOPED_TRACE(seed_trace(seed))).
inline uint64_t test_seed() {
  if (const char* s = std::getenv("SPARSESERVE_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}
inline std::string seed_trace(uint64_t seed) { return "SPARSESERVE_TEST_SEED=" + std::to_string(seed); }

// bf16 values: bits for the device and the same values as floats for the CPU twin.
struct Bf16Data {
  std::vector<uint16_t> bits;
  std::vector<float> f;
  size_t size() const { return bits.size(); }
};

inline Bf16Data to_bf16(std::span<const float> x) {
  Bf16Data d;
  d.bits.reserve(x.size());
  d.f.reserve(x.size());
  for (float v : x) {
    d.bits.push_back(f32_to_bf16(v));
    d.f.push_back(bf16_to_f32(d.bits.back()));
  }
  return d;
}

inline Bf16Data random_bf16(size_t n, std::mt19937_64& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return to_bf16(x);
}

inline std::vector<float> bits_to_float(std::span<const uint16_t> bits) {
  std::vector<float> f(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) f[i] = bf16_to_f32(bits[i]);
  return f;
}

// Device copy of host data (T and U of one size: uint16_t bits → bf16).
template <class T, class U>
DeviceBuffer<T> to_device(const std::vector<U>& host) {
  DeviceBuffer<T> d(host.size());
  d.upload(host);
  return d;
}
inline DeviceBuffer<bf16> to_device(const Bf16Data& x) { return to_device<bf16>(x.bits); }

// A device buffer of n elements with every byte 0xff: NaN for bf16 and fp32, -1 for integers.
template <class T>
DeviceBuffer<T> poisoned(size_t n) {
  DeviceBuffer<T> d(n);
  d.fill_bytes(0xff);
  return d;
}

inline std::vector<float> download_bf16(const DeviceBuffer<bf16>& d) { return bits_to_float(d.download<uint16_t>()); }

// |got - want| ≤ atol + rtol·|want| everywhere, and got finite wherever want is.
inline ::testing::AssertionResult all_close(std::span<const float> got, std::span<const float> want, float rtol,
                                            float atol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  size_t bad = 0, first = 0;
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool ok = std::isfinite(want[i]) ? std::isfinite(got[i]) && std::fabs(got[i] - want[i]) <=
                                                                           atol + rtol * std::fabs(want[i])
                                           : got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i]));
    if (!ok) {
      if (bad++ == 0) first = i;
    }
    if (std::isfinite(got[i]) && std::isfinite(want[i])) worst = std::max(worst, double(std::fabs(got[i] - want[i])));
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements off; first at " << first
                                       << ": got " << got[first] << ", want " << want[first]
                                       << " (rtol " << rtol << ", atol " << atol << "); max |diff| " << worst;
}

inline float rms(std::span<const float> x) {
  double s = 0.0;
  for (float v : x) s += double(v) * v;
  return x.empty() ? 0.0f : static_cast<float>(std::sqrt(s / double(x.size())));
}

}  // namespace sparseserve::gpu_test
