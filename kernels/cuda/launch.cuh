// Programmatic dependent launch (PDL, sm_90+), shared by the kernel families that use it. Include
// from .cu files only.
//
// A kernel launched with `programmatic` set may be scheduled while the kernel before it in the stream
// is still running: as soon as every CTA of that kernel has called pdl_launch_dependents() or exited.
// Its CTAs then run up to pdl_wait(), which returns once the previous kernel has completed and its
// writes are visible. The contract of every kernel launched this way:
//   - before pdl_wait() it reads only data that no kernel still possibly running writes: not the
//     previous kernel, nor an earlier one that let its successor start early (its own plan, which
//     the host uploads by a copy the stream orders before those kernels, or inputs its header names
//     as such), and writes nothing;
//   - it calls pdl_wait() on every path that reads or writes anything else, and at least one of its
//     CTAs calls it even when the launch has nothing to do.
// Kept transitively: a kernel completes only after its own wait, so kernel n+2 sees kernel n's writes.
// One family departs from the first rule by design, with its own argument: page_select's selecting
// kernel (page_select.cu) reads the scoring kernel's output and writes its own outputs before its
// wait, gated by per-row counts the scoring CTAs release, and relying on those CTAs letting it in
// only after their own wait.
// Without the launch attribute (or before sm_90) pdl_wait() and pdl_launch_dependents() do nothing.
#pragma once

#ifndef __CUDACC__
#error "launch.cuh holds device code: include it from .cu files only"
#endif

#include <cuda_runtime.h>

#include <utility>

namespace sparseserve::kernels::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization when
// `programmatic` and in thread block clusters of `cluster` CTAs along x when cluster > 1 (grid.x a
// multiple of it). Returns the launch's error (the caller checks it).
template <class... Params, class... Args>
cudaError_t launch_kernel_clustered(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                    cudaStream_t stream, bool programmatic, unsigned cluster, Args&&... args) {
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (programmatic) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster;
    attr[n].val.clusterDim.y = 1;
    attr[n++].val.clusterDim.z = 1;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = n;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

template <class... Params, class... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          bool programmatic, Args&&... args) {
  return launch_kernel_clustered(kernel, grid, block, smem, stream, programmatic, 1u, std::forward<Args>(args)...);
}

}  // namespace sparseserve::kernels::cuda
