// Shared CUDA helpers for every kernel family in kernels/cuda/ (host and device parts).
//
// Host side (any translation unit, nvcc or the host compiler):
//   - CUDA_CHECK(expr): runs a cudaError_t-returning call; on failure throws sparseserve::InternalError
//     "<file>:<line>: <expr>: <cudaErrorName>: <message>" naming the caller's line. Never aborts
//     (STYLE.md §12): the server boundary catches it.
//   - CUDA_CHECK_LAUNCH(): checks the launch that was just issued (cudaGetLastError). It does not
//     synchronise, so it is legal during CUDA graph capture.
//   - DeviceBuffer<T>: one cudaMalloc'd array of T, move-only, freed on destruction.
//   - PinnedBuffer<T>, CudaEvent: a page-locked host array and an event, owned the same way (so a
//     constructor that throws half-way leaks neither).
//   - cuda_device_count(): number of devices, 0 when there is no device or no driver (tests skip).
// Device side (nvcc only): bf16x8 <-> float[8] for 16-byte loads and stores, warp reductions.
//
// bf16 on the host is its raw bit pattern (uint16_t, common/half.h converts); on the device it is
// __nv_bfloat16. The two have the same size and layout, so DeviceBuffer copies between them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/errors.h"

namespace sparseserve::kernels::cuda {

// Throws InternalError naming `loc` when err is not cudaSuccess. `what` is the failing expression.
inline void check_cuda(cudaError_t err, const char* what,
                       std::source_location loc = std::source_location::current()) {
  if (err == cudaSuccess) return;
  throw InternalError(std::string(what) + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err), loc);
}

}  // namespace sparseserve::kernels::cuda

// Checked CUDA runtime call: CUDA_CHECK(cudaMemcpy(...)).
#define CUDA_CHECK(expr) ::sparseserve::kernels::cuda::check_cuda((expr), #expr)
// Checks the kernel launch issued just before (configuration errors, not asynchronous faults).
#define CUDA_CHECK_LAUNCH() ::sparseserve::kernels::cuda::check_cuda(cudaGetLastError(), "kernel launch")

namespace sparseserve::kernels::cuda {

// Number of CUDA devices; 0 (and the sticky error cleared) when there is no device or no driver.
inline int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

namespace detail {

// An owned array of `size()` elements of T from one CUDA allocator: Alloc::allocate(bytes, loc)
// returns the memory (or throws InternalError naming loc), Alloc::release(p) frees it. Move-only.
template <class T, class Alloc>
class OwnedArray {
  static_assert(std::is_trivially_copyable_v<T>);

 public:
  OwnedArray() = default;
  explicit OwnedArray(size_t count, std::source_location loc = std::source_location::current()) {
    if (count == 0) return;
    ptr_ = static_cast<T*>(Alloc::allocate(count * sizeof(T), loc));
    size_ = count;
  }
  ~OwnedArray() { reset(); }
  OwnedArray(const OwnedArray&) = delete;
  OwnedArray& operator=(const OwnedArray&) = delete;
  OwnedArray(OwnedArray&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  OwnedArray& operator=(OwnedArray&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }
  bool empty() const { return size_ == 0; }

  // Frees the memory (errors ignored: destructors must not throw; a fault shows at the next check).
  void reset() noexcept {
    if (ptr_ != nullptr) Alloc::release(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }

 private:
  T* ptr_ = nullptr;
  size_t size_ = 0;
};

struct DeviceAlloc {
  static void* allocate(size_t bytes, const std::source_location& loc) {
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, bytes), "cudaMalloc", loc);
    return p;
  }
  static void release(void* p) noexcept { (void)cudaFree(p); }
};

struct PinnedAlloc {  // page-locked host memory, zero-filled
  static void* allocate(size_t bytes, const std::source_location& loc) {
    void* p = nullptr;
    check_cuda(cudaMallocHost(&p, bytes), "cudaMallocHost", loc);
    std::memset(p, 0, bytes);
    return p;
  }
  static void release(void* p) noexcept { (void)cudaFreeHost(p); }
};

}  // namespace detail

// A device array of `size()` elements of T (uninitialised), owned: cudaFree on destruction.
// Copies are synchronous (cudaMemcpy) unless a stream is given (then the host memory must stay alive
// until the stream reaches the copy). U in the copy functions must have T's size (e.g. uint16_t
// bit patterns for __nv_bfloat16).
template <class T>
class DeviceBuffer : public detail::OwnedArray<T, detail::DeviceAlloc> {
  using Base = detail::OwnedArray<T, detail::DeviceAlloc>;

 public:
  using Base::Base;
  DeviceBuffer() = default;
  using Base::bytes;
  using Base::data;
  using Base::size;
  // Allocates and uploads host data.
  template <class U>
  explicit DeviceBuffer(std::span<const U> host, std::source_location loc = std::source_location::current())
      : Base(host.size(), loc) {
    upload(host, nullptr, loc);
  }

  // Copies host[0 .. host.size()) to the front of the buffer. Precondition: host.size() ≤ size().
  template <class U>
  void upload(std::span<const U> host, cudaStream_t stream = nullptr,
              std::source_location loc = std::source_location::current()) {
    static_assert(sizeof(U) == sizeof(T) && std::is_trivially_copyable_v<U>);
    check(host.size() <= size(), "DeviceBuffer::upload: host data larger than the buffer", loc);
    if (host.empty()) return;
    if (stream == nullptr) {
      check_cuda(cudaMemcpy(data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy", loc);
    } else {
      check_cuda(cudaMemcpyAsync(data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream),
                 "cudaMemcpyAsync", loc);
    }
  }
  template <class U>
  void upload(const std::vector<U>& host, cudaStream_t stream = nullptr,
              std::source_location loc = std::source_location::current()) {
    upload(std::span<const U>(host), stream, loc);
  }

  // Copies the whole buffer to a new host vector of U (synchronous: waits for all prior work).
  template <class U = T>
  std::vector<U> download(std::source_location loc = std::source_location::current()) const {
    static_assert(sizeof(U) == sizeof(T) && std::is_trivially_copyable_v<U>);
    std::vector<U> host(size());
    if (size() > 0) {
      check_cuda(cudaMemcpy(host.data(), data(), bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy", loc);
    }
    return host;
  }

  // Sets every byte to `byte` (0xff: every bf16, fp16 and fp32 element becomes NaN; tests poison
  // outputs with it).
  void fill_bytes(int byte, cudaStream_t stream = nullptr,
                  std::source_location loc = std::source_location::current()) {
    if (size() == 0) return;
    check_cuda(cudaMemsetAsync(data(), byte, bytes(), stream), "cudaMemsetAsync", loc);
  }
};

// A page-locked host array of `size()` elements of T (zero-filled), owned: cudaFreeHost on destruction.
// For staging buffers that cudaMemcpyAsync reads after the call returns: the owner makes sure (an
// event) that no copy still reads the buffer before it is rewritten or freed.
template <class T>
using PinnedBuffer = detail::OwnedArray<T, detail::PinnedAlloc>;

// An owned CUDA event (cudaEventCreateWithFlags), destroyed on destruction. Destruction does not wait
// for the event: an owner whose staging memory a recorded copy may still read synchronises first.
class CudaEvent {
 public:
  CudaEvent() = default;
  explicit CudaEvent(unsigned flags, std::source_location loc = std::source_location::current()) {
    check_cuda(cudaEventCreateWithFlags(&event_, flags), "cudaEventCreateWithFlags", loc);
  }
  ~CudaEvent() {
    if (event_ != nullptr) (void)cudaEventDestroy(event_);
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  CudaEvent(CudaEvent&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& o) noexcept {
    if (this != &o) {
      if (event_ != nullptr) (void)cudaEventDestroy(event_);
      event_ = std::exchange(o.event_, nullptr);
    }
    return *this;
  }

  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// True when p is 16-byte aligned (the vectorised kernels' fast path condition).
inline bool is_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// True when the byte ranges [a, a + a_bytes) and [b, b + b_bytes) share a byte (the host checks of
// "out must not overlap in" contracts).
inline bool ranges_overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && x < y + b_bytes && y < x + a_bytes;
}

}  // namespace sparseserve::kernels::cuda

#ifdef __CUDACC__
namespace sparseserve::kernels::cuda {

// ---- bf16 vectors: 8 bf16 = 16 bytes = one uint4 (one 128-bit load/store) ----

__device__ __forceinline__ void bf16x8_to_float(const uint4& raw, float (&f)[8]) {
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

// Round-to-nearest-even, like common/half.h f32_to_bf16.
__device__ __forceinline__ uint4 float_to_bf16x8(const float (&f)[8]) {
  uint4 raw;
  auto* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return raw;
}

// ---- warp reductions (all 32 lanes must participate; every lane gets the result) ----

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum for blockDim.x a multiple of 32 (≤ 1024); `scratch` holds ≥ 32 floats of shared
// memory. Every thread gets the result. Contains __syncthreads: call from all threads.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < n_warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

}  // namespace sparseserve::kernels::cuda
#endif  // __CUDACC__
