// cuBLASLt wrapper (host code only). How this works: a row-major y[M][N] = x[M][K] · w[N][K]ᵀ is, in
// cuBLASLt's column-major terms, D[N×M] = op(A)·B with A = w seen as K×N (ld ldw, transposed),
// B = x seen as K×M (ld ldx) and D = y seen as N×M (ld ldy); the bias epilogue adds bias[n] to row n
// of D, i.e. to column n of y. Descriptors and the heuristic's candidate algorithms are built once per
// plan key; with GemmTuning::kTimed the first run outside a graph capture times the candidates. The
// one kernel here evicts L2 between timed runs of shapes whose operands fit in it.
#include "kernels/cuda/gemm.h"

#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/cuda_check.h"

namespace sparseserve::kernels::cuda {

namespace {

void check_cublas(cublasStatus_t status, const char* what, const std::source_location& loc) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw InternalError(std::string(what) + ": " + cublasLtGetStatusString(status), loc);
}

// log2 of the pointer's alignment, capped at 256 bytes (cuBLASLt's default assumption).
uint8_t alignment_log2(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return static_cast<uint8_t>(a == 0 ? 8 : std::min(8, std::countr_zero(a)));
}

struct PlanKey {
  int64_t M, N, K, ldx, ldw, ldy;
  bool has_bias;
  uint8_t align_x, align_w, align_y, align_bias;
  bool operator==(const PlanKey&) const = default;
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    size_t h = 1469598103934665603ull;
    auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(static_cast<uint64_t>(k.M));
    mix(static_cast<uint64_t>(k.N));
    mix(static_cast<uint64_t>(k.K));
    mix(static_cast<uint64_t>(k.ldx));
    mix(static_cast<uint64_t>(k.ldw));
    mix(static_cast<uint64_t>(k.ldy));
    mix(uint64_t{k.has_bias} | uint64_t{k.align_x} << 8 | uint64_t{k.align_w} << 16 | uint64_t{k.align_y} << 24 |
        uint64_t{k.align_bias} << 32);
    return h;
  }
};

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};                  // what run() launches, unless gemm_ex
  bool gemm_ex = false;                         // run() calls cublasGemmEx (cuBLAS's own choice) instead
  cublasLtMatmulAlgo_t candidates[kGemmCandidates]{};  // the heuristic's answers, best first
  int n_candidates = 0;                                  // 0 once timed
  bool timed = false;
  bool gemm_ex_ok = false;  // cublasGemmEx may stand in: no bias, leading dimensions within int
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// Reads n 16-byte words through L2, so that what was cached before is evicted (the caller zeroes the
// buffer once: the XOR stays 0 and nothing is written; the store only keeps the loads alive).
__global__ void l2_evict_kernel(const uint4* p, size_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const uint4 v = __ldcg(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9E3779B9u) *sink = acc;
}

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  cublasHandle_t blas = nullptr;  // for the cublasGemmEx candidate (plans without bias), made on first use
  GemmTuning tuning = GemmTuning::kTimed;
  DeviceBuffer<std::byte> workspace;
  std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  // The handles go with the Impl, so a Gemm constructor that throws after cublasLtCreate leaks none.
  ~Impl() {
    plans.clear();
    if (blas != nullptr) cublasDestroy(blas);
    if (handle != nullptr) cublasLtDestroy(handle);
  }

  // One product with algorithm `algo`, or through cublasGemmEx when gemm_ex.
  cublasStatus_t launch(const Plan& p, bool gemm_ex, const cublasLtMatmulAlgo_t& algo, const GemmArgs& g,
                        cudaStream_t stream) {
    const float alpha = 1.0f, beta = 0.0f;
    if (gemm_ex) return launch_gemm_ex(g, stream);
    return cublasLtMatmul(handle, p.op, &alpha, g.w, p.a, g.x, p.b, &beta, g.y, p.d, g.y, p.d, &algo, workspace.data(),
                          workspace.bytes(), stream);
  }

  // The same product through cuBLAS's cublasGemmEx, which picks its kernel by its own rules; its
  // handle gets the shared workspace once. No bias epilogue there.
  cublasStatus_t launch_gemm_ex(const GemmArgs& g, cudaStream_t stream) {
    if (blas == nullptr) {
      if (const cublasStatus_t st = cublasCreate(&blas); st != CUBLAS_STATUS_SUCCESS) return st;
      if (const cublasStatus_t st = cublasSetWorkspace(blas, workspace.data(), workspace.bytes());
          st != CUBLAS_STATUS_SUCCESS) {
        return st;
      }
    }
    if (const cublasStatus_t st = cublasSetStream(blas, stream); st != CUBLAS_STATUS_SUCCESS) return st;
    const float alpha = 1.0f, beta = 0.0f;
    return cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(g.N), static_cast<int>(g.M),
                        static_cast<int>(g.K), &alpha, g.w, CUDA_R_16BF, static_cast<int>(g.ldw), g.x, CUDA_R_16BF,
                        static_cast<int>(g.ldx), &beta, g.y, CUDA_R_16BF, static_cast<int>(g.ldy), CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT);
  }

  // Times every candidate on g and keeps the fastest; a candidate that cuBLASLt refuses at launch is
  // passed over. Two sweeps, the second in reverse order, their times added: clocks fall as the GPU
  // heats over a sweep of large GEMMs, which one sweep would charge to the candidates timed last
  // (cublasGemmEx among them). Operands that fit in L2 would stay there over back-to-back runs, but in
  // a model each layer's weights arrive from memory (the other layers evicted them): such shapes are
  // timed one run at a time after reading twice L2's size of scratch (kColdReps runs per sweep), so the
  // choice is the fastest from memory, not from L2. Larger shapes stream from memory anyway: a warm-up
  // run, then kTimedReps runs between two events. Synchronizes the stream.
  void time_candidates(Plan& p, const GemmArgs& g, cudaStream_t stream) {
    int dev = 0, l2 = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    const auto operand_bytes = static_cast<size_t>(2 * (g.M * g.K + g.N * g.K + g.M * g.N));
    bool cold = operand_bytes <= static_cast<size_t>(l2);
    DeviceBuffer<uint4> scratch;
    DeviceBuffer<uint32_t> sink;
    if (cold) {
      // Without the scratch (a serving process may hold nearly all memory) the shape is timed back to
      // back instead.
      try {
        scratch = DeviceBuffer<uint4>(2 * static_cast<size_t>(l2) / sizeof(uint4));
        sink = DeviceBuffer<uint32_t>(1);
      } catch (const InternalError&) {
        (void)cudaGetLastError();  // the failed allocation's error (not sticky)
        cold = false;
      }
    }
    if (cold) CUDA_CHECK(cudaMemsetAsync(scratch.data(), 0, scratch.bytes(), stream));
    // Start and stop of each timed run (cold), or of the back-to-back runs.
    std::vector<CudaEvent> run_events;  // destroyed on every exit, a thrown check included
    for (int i = 0; i < 2 * (cold ? Gemm::kColdReps : 1); ++i) run_events.emplace_back(cudaEventDefault);
    const auto evict_l2 = [&] {
      l2_evict_kernel<<<1024, 256, 0, stream>>>(scratch.data(), scratch.size(), sink.data());
      CUDA_CHECK_LAUNCH();
    };
    // Milliseconds of the timed runs of one candidate, or INFINITY when a launch is refused.
    const auto time_one = [&](bool ex, const cublasLtMatmulAlgo_t& algo) {
      if (launch(p, ex, algo, g, stream) != CUBLAS_STATUS_SUCCESS) return INFINITY;  // warm-up
      bool ok = true;
      float total = 0.0f;
      if (cold) {
        for (int r = 0; r < Gemm::kColdReps && ok; ++r) {
          evict_l2();
          CUDA_CHECK(cudaEventRecord(run_events[2 * r].get(), stream));
          ok = launch(p, ex, algo, g, stream) == CUBLAS_STATUS_SUCCESS;
          CUDA_CHECK(cudaEventRecord(run_events[2 * r + 1].get(), stream));
        }
        CUDA_CHECK(cudaEventSynchronize(run_events.back().get()));
        for (int r = 0; r < Gemm::kColdReps && ok; ++r) {
          float ms = 0.0f;
          CUDA_CHECK(cudaEventElapsedTime(&ms, run_events[2 * r].get(), run_events[2 * r + 1].get()));
          total += ms;
        }
      } else {
        CUDA_CHECK(cudaEventRecord(run_events[0].get(), stream));
        for (int r = 0; r < Gemm::kTimedReps && ok; ++r) ok = launch(p, ex, algo, g, stream) == CUBLAS_STATUS_SUCCESS;
        CUDA_CHECK(cudaEventRecord(run_events[1].get(), stream));
        CUDA_CHECK(cudaEventSynchronize(run_events[1].get()));
        CUDA_CHECK(cudaEventElapsedTime(&total, run_events[0].get(), run_events[1].get()));
      }
      return ok ? total : INFINITY;
    };
    // Candidate c < n_candidates: the heuristic's c-th algorithm; c = n_candidates: cublasGemmEx.
    const int n = p.n_candidates + (p.gemm_ex_ok ? 1 : 0);
    float total_ms[kGemmCandidates + 1] = {};
    for (int sweep = 0; sweep < 2; ++sweep) {
      for (int i = 0; i < n; ++i) {
        const int c = sweep == 0 ? i : n - 1 - i;
        if (total_ms[c] == INFINITY) continue;
        const bool ex = c == p.n_candidates;
        total_ms[c] += time_one(ex, p.candidates[ex ? 0 : c]);
      }
    }
    float best_ms = INFINITY;
    bool best_ex = false;
    for (int c = 0; c < n; ++c) {
      if (total_ms[c] < best_ms) {
        best_ms = total_ms[c];
        best_ex = c == p.n_candidates;
        if (!best_ex) p.algo = p.candidates[c];
      }
    }
    p.gemm_ex = best_ex;
    p.n_candidates = 0;
    p.timed = true;
  }

  Plan& plan_for(const PlanKey& key, const GemmArgs& g, const std::source_location& loc) {
    if (auto it = plans.find(key); it != plans.end()) return *it->second;
    auto p = std::make_unique<Plan>();
    p->gemm_ex_ok = !key.has_bias && std::max({key.ldx, key.ldw, key.ldy}) <= INT32_MAX;
    check_cublas(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate", loc);
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    check_cublas(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)),
                 "set TRANSA", loc);
    check_cublas(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)),
                 "set TRANSB", loc);
    if (key.has_bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      const cudaDataType_t bias_type = CUDA_R_16BF;
      check_cublas(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)),
                   "set EPILOGUE", loc);
      check_cublas(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                  sizeof(bias_type)),
                   "set BIAS_DATA_TYPE", loc);
      // The heuristic reads the bias pointer's alignment; run() sets the actual pointer each call.
      check_cublas(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)),
                   "set BIAS_POINTER", loc);
    }
    const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
    check_cublas(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, u(key.K), u(key.N), key.ldw), "layout A", loc);
    check_cublas(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, u(key.K), u(key.M), key.ldx), "layout B", loc);
    check_cublas(cublasLtMatrixLayoutCreate(&p->d, CUDA_R_16BF, u(key.N), u(key.M), key.ldy), "layout D", loc);

    cublasLtMatmulPreference_t pref = nullptr;
    check_cublas(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate", loc);
    const uint64_t ws = workspace.bytes();
    const uint32_t al_a = 1u << key.align_w, al_b = 1u << key.align_x, al_d = 1u << key.align_y;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d));
    cublasLtMatmulHeuristicResult_t results[kGemmCandidates]{};
    const int wanted = tuning == GemmTuning::kTimed ? kGemmCandidates : 1;
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(handle, p->op, p->a, p->b, p->d, p->d, pref, wanted, results, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    check_cublas(st, "cublasLtMatmulAlgoGetHeuristic", loc);
    if (found == 0) {
      throw InternalError("gemm: cuBLASLt has no algorithm for M=" + std::to_string(key.M) + " N=" +
                              std::to_string(key.N) + " K=" + std::to_string(key.K),
                          loc);
    }
    p->algo = results[0].algo;
    for (int i = 0; i < found; ++i) p->candidates[i] = results[i].algo;
    p->n_candidates = found;
    return *plans.emplace(key, std::move(p)).first->second;
  }
};

Gemm::Gemm(size_t workspace_bytes, GemmTuning tuning) : impl_(std::make_unique<Impl>()) {
  const auto loc = std::source_location::current();
  impl_->tuning = tuning;
  check_cublas(cublasLtCreate(&impl_->handle), "cublasLtCreate", loc);
  impl_->workspace = DeviceBuffer<std::byte>(workspace_bytes);
}

Gemm::~Gemm() = default;

size_t Gemm::cached_plans() const { return impl_->plans.size(); }

size_t Gemm::timed_plans() const {
  size_t n = 0;
  for (const auto& entry : impl_->plans) n += entry.second->timed ? 1 : 0;
  return n;
}

void Gemm::run(const GemmArgs& args, cudaStream_t stream, std::source_location loc) {
  GemmArgs g = args;
  if (g.ldx == 0) g.ldx = g.K;
  if (g.ldw == 0) g.ldw = g.K;
  if (g.ldy == 0) g.ldy = g.N;
  const auto fail = [&](const std::string& what) {
    throw InternalError("gemm(M=" + std::to_string(g.M) + ", N=" + std::to_string(g.N) + ", K=" +
                            std::to_string(g.K) + ", ldx=" + std::to_string(g.ldx) + ", ldw=" + std::to_string(g.ldw) +
                            ", ldy=" + std::to_string(g.ldy) + "): " + what,
                        loc);
  };
  if (g.M < 0 || g.N < 1 || g.K < 1) fail("M must be ≥ 0, N and K ≥ 1");
  if (g.M > INT32_MAX || g.N > INT32_MAX || g.K > INT32_MAX) fail("dimensions must be < 2^31");
  if (g.ldx < g.K) fail("ldx < K");
  if (g.ldw < g.K) fail("ldw < K");
  if (g.ldy < g.N) fail("ldy < N");
  if (g.M == 0) return;
  if (g.x == nullptr || g.w == nullptr || g.y == nullptr) fail("null x, w or y");
  // Bytes each matrix spans: (rows − 1) strides and one row.
  const auto span = [](int64_t rows, int64_t ld, int64_t cols) {
    return static_cast<size_t>((rows - 1) * ld + cols) * 2;
  };
  const size_t y_bytes = span(g.M, g.ldy, g.N);
  if (ranges_overlap(g.y, y_bytes, g.x, span(g.M, g.ldx, g.K)) ||
      ranges_overlap(g.y, y_bytes, g.w, span(g.N, g.ldw, g.K)) ||
      (g.bias != nullptr && ranges_overlap(g.y, y_bytes, g.bias, static_cast<size_t>(g.N) * 2))) {
    fail("y overlaps x, w or bias");
  }
  const PlanKey key{g.M,
                    g.N,
                    g.K,
                    g.ldx,
                    g.ldw,
                    g.ldy,
                    g.bias != nullptr,
                    alignment_log2(g.x),
                    alignment_log2(g.w),
                    alignment_log2(g.y),
                    alignment_log2(g.bias)};
  Plan& plan = impl_->plan_for(key, g, loc);
  if (key.has_bias) {
    check_cublas(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)),
                 "set BIAS_POINTER", loc);
  }
  if (!plan.timed && impl_->tuning == GemmTuning::kTimed) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture == cudaStreamCaptureStatusNone) impl_->time_candidates(plan, g, stream);
  }
  check_cublas(impl_->launch(plan, plan.gemm_ex, plan.algo, g, stream), "cublasLtMatmul", loc);
}

}  // namespace sparseserve::kernels::cuda
