// bf16 GEMM through cuBLASLt: y = x · Wᵀ (+ bias), fp32 accumulation, one rounding to bf16.
// Twin: kernels/cpu/matmul.h matmul (same contract, fp32).
// Layouts, all row-major bf16:
//   x    [M][K], row r at x + r * ldx (ldx ≥ K)      activations
//   w    [N][K], row n at w + n * ldw (ldw ≥ K)      weight, output features × input features
//   y    [M][N], row r at y + r * ldy (ldy ≥ N)      output, must not overlap x, w or bias
//   bias [N] or null                                  added to every row of y
// (column-major view for cuBLASLt: yᵀ[N×M] = op_T(w)[N×K] · xᵀ[K×M], the "TN" layout.)
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <source_location>

namespace sparseserve::kernels::cuda {

struct GemmArgs {
  const __nv_bfloat16* x = nullptr;
  const __nv_bfloat16* w = nullptr;
  __nv_bfloat16* y = nullptr;
  const __nv_bfloat16* bias = nullptr;  // optional
  int64_t M = 0, N = 0, K = 0;
  int64_t ldx = 0, ldw = 0, ldy = 0;    // 0 means dense (K, K, N)
};

// How a plan's algorithm is chosen.
enum class GemmTuning {
  kHeuristic,  // cuBLASLt's first heuristic answer
  kTimed,      // the fastest of the heuristic's first kGemmCandidates answers and (no bias) of
               // cublasGemmEx's own choice, timed on the first run
};
inline constexpr int kGemmCandidates = 32;

// Owns a cuBLASLt handle, a workspace and the plans (descriptors + algorithm) cached per shape,
// leading dimensions, bias presence and pointer alignment class. The first run of a new shape queries
// the heuristic on the host; with GemmTuning::kTimed it also runs each candidate algorithm on the
// caller's own arguments and stream (two sweeps, the second in reverse order, each 1 warm-up +
// kTimedReps timed runs per candidate, CUDA events; when x, W and y fit in L2, kColdReps runs each
// after evicting L2, as a model's weights arrive from memory) and keeps the fastest: that first run
// synchronizes the stream and briefly allocates twice L2's size of scratch (without it, such shapes
// are timed back to back too). Every candidate computes the same product, so
// y is right whichever wins. A first run inside a CUDA graph capture cannot time: it takes the
// heuristic's answer for the capture and tunes at the shape's next run outside a capture. Later runs
// only launch, so a shape seen before can be captured. Not thread-safe, and the workspace is shared
// by every run: use one Gemm per stream (or order the streams).
class Gemm {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;  // what cuBLAS suggests for Hopper
  static constexpr int kTimedReps = 3;
  static constexpr int kColdReps = 5;

  // Uses the current device. Throws InternalError when cuBLASLt or the allocation fails.
  explicit Gemm(size_t workspace_bytes = kDefaultWorkspaceBytes, GemmTuning tuning = GemmTuning::kTimed);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Enqueues y = x · Wᵀ (+ bias) on stream. Checks shapes, leading dimensions and pointers on the
  // host first and throws InternalError naming the caller (loc) when they are inconsistent; M = 0 is
  // a no-op.
  void run(const GemmArgs& args, cudaStream_t stream, std::source_location loc = std::source_location::current());

  // Number of cached plans, and of those whose algorithm was chosen by timing (for tests).
  size_t cached_plans() const;
  size_t timed_plans() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparseserve::kernels::cuda
