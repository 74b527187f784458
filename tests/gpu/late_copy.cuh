// A producer for the tests of programmatic dependent launch (kernels/cuda/launch.cuh): late_copy
// lets the stream's next kernel be scheduled at once (pdl_launch_dependents), then writes its output
// only after about delay_us. A consumer launched programmatically right after it that read its
// input before pdl_wait() would read what the buffer held before (the tests poison it).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"

namespace sparseserve::gpu_test {
namespace {  // a kernel per test file that includes this

__global__ void late_copy_kernel(const uint8_t* src, uint8_t* dst, size_t bytes, uint64_t delay_ns) {
  kernels::cuda::pdl_launch_dependents();
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < delay_ns);
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < bytes; i += size_t{gridDim.x} * blockDim.x) {
    dst[i] = src[i];
  }
}

// Copies `bytes` from src to dst on `stream`, about delay_us after the copy kernel starts.
void late_copy(const void* src, void* dst, size_t bytes, cudaStream_t stream, int delay_us = 200) {
  late_copy_kernel<<<64, 256, 0, stream>>>(static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst), bytes,
                                           uint64_t{1000} * static_cast<uint64_t>(delay_us));
  CUDA_CHECK_LAUNCH();
}

}  // namespace
}  // namespace sparseserve::gpu_test
