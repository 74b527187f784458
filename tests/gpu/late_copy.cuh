// A producer for the tests of programmatic dependent launch (kernels/cuda/launch.cuh): late_copy
// lets the stream's next kernel be scheduled at once (pdl_launch_dependents), then writes its output
// only after about delay_us. A consumer launched programmatically right after it that read its
// input before pdl_wait() would read what the buffer held before (the tests poison it).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"

namespace sparseserve::gpu_test {
namespace {  // a kernel per test file that includes this

// One range of a late copy: `bytes` from src to dst.
struct LateRange {
  const void* src;
  void* dst;
  size_t bytes;
};

// Up to kMaxLateRanges ranges copied by one late_copy launch.
constexpr int kMaxLateRanges = 4;
struct LateRanges {
  LateRange range[kMaxLateRanges];
  int n;
};

__global__ void late_copy_kernel(const LateRanges r, uint64_t delay_ns) {
  kernels::cuda::pdl_launch_dependents();
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < delay_ns);
  for (int k = 0; k < r.n; ++k) {
    const auto* src = static_cast<const uint8_t*>(r.range[k].src);
    auto* dst = static_cast<uint8_t*>(r.range[k].dst);
    for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < r.range[k].bytes;
         i += size_t{gridDim.x} * blockDim.x) {
      dst[i] = src[i];
    }
  }
}

// Copies each range on `stream`, about delay_us after the copy kernel starts (one launch).
void late_copy(std::initializer_list<LateRange> ranges, cudaStream_t stream, int delay_us = 200) {
  LateRanges r{};
  check(ranges.size() <= kMaxLateRanges, "late_copy: too many ranges");
  for (const LateRange& x : ranges) r.range[r.n++] = x;
  late_copy_kernel<<<64, 256, 0, stream>>>(r, uint64_t{1000} * static_cast<uint64_t>(delay_us));
  CUDA_CHECK_LAUNCH();
}

// Keeps `stream` busy for about us (a kernel that only waits, launched without the programmatic
// attribute), so that the host queues what follows before it starts: a test of programmatic launch
// then does not depend on the host enqueueing the consumer within late_copy's delay.
void hold_stream(cudaStream_t stream, int us = 2000) { late_copy({}, stream, us); }

// Copies `bytes` from src to dst on `stream`, about delay_us after the copy kernel starts.
void late_copy(const void* src, void* dst, size_t bytes, cudaStream_t stream, int delay_us = 200) {
  late_copy({{src, dst, bytes}}, stream, delay_us);
}

}  // namespace
}  // namespace sparseserve::gpu_test
