// cuBLASLt wrapper (host code only). How this works: a row-major y[M][N] = x[M][K] · w[N][K]ᵀ is, in
// cuBLASLt's column-major terms, D[N×M] = op(A)·B with A = w seen as K×N (ld ldw, transposed),
// B = x seen as K×M (ld ldx) and D = y seen as N×M (ld ldy); the bias epilogue adds bias[n] to row n
// of D, i.e. to column n of y. Descriptors and the heuristic's algorithm are built once per plan key.
#include "kernels/cuda/gemm.h"

#include <cublasLt.h>

#include <algorithm>
#include <bit>
#include <string>
#include <unordered_map>

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
  cublasLtMatmulAlgo_t algo{};
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

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer<std::byte> workspace;
  std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;

  const Plan& plan_for(const PlanKey& key, const GemmArgs& g, const std::source_location& loc) {
    if (auto it = plans.find(key); it != plans.end()) return *it->second;
    auto p = std::make_unique<Plan>();
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
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(handle, p->op, p->a, p->b, p->d, p->d, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    check_cublas(st, "cublasLtMatmulAlgoGetHeuristic", loc);
    if (found == 0) {
      throw InternalError("gemm: cuBLASLt has no algorithm for M=" + std::to_string(key.M) + " N=" +
                              std::to_string(key.N) + " K=" + std::to_string(key.K),
                          loc);
    }
    p->algo = result.algo;
    return *plans.emplace(key, std::move(p)).first->second;
  }
};

Gemm::Gemm(size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
  const auto loc = std::source_location::current();
  check_cublas(cublasLtCreate(&impl_->handle), "cublasLtCreate", loc);
  impl_->workspace = DeviceBuffer<std::byte>(workspace_bytes);
}

Gemm::~Gemm() {
  impl_->plans.clear();
  if (impl_->handle) cublasLtDestroy(impl_->handle);
}

size_t Gemm::cached_plans() const { return impl_->plans.size(); }

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
  const Plan& plan = impl_->plan_for(key, g, loc);
  if (key.has_bias) {
    check_cublas(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)),
                 "set BIAS_POINTER", loc);
  }
  const float alpha = 1.0f, beta = 0.0f;
  check_cublas(cublasLtMatmul(impl_->handle, plan.op, &alpha, g.w, plan.a, g.x, plan.b, &beta, g.y, plan.d, g.y,
                              plan.d, &plan.algo, impl_->workspace.data(), impl_->workspace.bytes(), stream),
               "cublasLtMatmul", loc);
}

}  // namespace sparseserve::kernels::cuda
