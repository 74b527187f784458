// kernels/cuda/gemm (cuBLASLt) vs an fp32 CPU GEMM (kernels/cpu/matmul) on the same bf16-rounded
// inputs; plan caching; timed algorithm choice (outside and after a capture); shape checks naming the
// caller; replay under a CUDA graph.
#include <gtest/gtest.h>

#include <cstring>

#include "kernels/cpu/matmul.h"
#include "kernels/cuda/gemm.h"
#include "ops_test_util.h"

namespace sparseserve::gpu_test {
namespace {

namespace cuda = kernels::cuda;
namespace cpu = kernels::cpu;

struct GemmCase {
  int64_t M, N, K;
  int64_t pad_x = 0, pad_w = 0, pad_y = 0;  // leading dimension = dense + pad
  bool bias = false;
};

// Host reference: y[m, n] = Σ_k x[m, k] w[n, k] (+ bias[n]) in fp32 over the bf16 values, dense rows.
std::vector<float> reference(const GemmCase& c, const Bf16Data& x, const Bf16Data& w, const Bf16Data* bias) {
  const int64_t ldx = c.K + c.pad_x, ldw = c.K + c.pad_w;
  std::vector<float> xd(size_t(c.M * c.K)), wd(size_t(c.N * c.K)), y(size_t(c.M * c.N));
  for (int64_t m = 0; m < c.M; ++m) std::memcpy(&xd[size_t(m * c.K)], &x.f[size_t(m * ldx)], size_t(c.K) * 4);
  for (int64_t n = 0; n < c.N; ++n) std::memcpy(&wd[size_t(n * c.K)], &w.f[size_t(n * ldw)], size_t(c.K) * 4);
  const cpu::WeightMatrix wm{kernels::GgmlType::F32, c.N, c.K, reinterpret_cast<const std::byte*>(wd.data()),
                             size_t(c.K) * 4};
  cpu::matmul(xd.data(), c.M, wm, y.data(), bias ? bias->f.data() : nullptr);
  return y;
}

void run_case(cuda::Gemm& gemm, const GemmCase& c, std::mt19937_64& rng) {
  SCOPED_TRACE("M " + std::to_string(c.M) + " N " + std::to_string(c.N) + " K " + std::to_string(c.K) + " pads " +
               std::to_string(c.pad_x) + "/" + std::to_string(c.pad_w) + "/" + std::to_string(c.pad_y) +
               (c.bias ? " bias" : ""));
  const int64_t ldx = c.K + c.pad_x, ldw = c.K + c.pad_w, ldy = c.N + c.pad_y;
  const Bf16Data x = random_bf16(size_t(c.M * ldx), rng, -1.0f, 1.0f);
  const Bf16Data w = random_bf16(size_t(c.N * ldw), rng, -1.0f, 1.0f);
  const Bf16Data bias = random_bf16(size_t(c.N), rng, -2.0f, 2.0f);
  auto dx = to_device(x);
  auto dw = to_device(w);
  auto dbias = to_device(bias);
  auto dy = poisoned<bf16>(size_t(c.M * ldy));
  gemm.run({.x = dx.data(), .w = dw.data(), .y = dy.data(), .bias = c.bias ? dbias.data() : nullptr, .M = c.M,
            .N = c.N, .K = c.K, .ldx = ldx, .ldw = ldw, .ldy = ldy},
           nullptr);
  const std::vector<float> got_padded = download_bf16(dy);
  std::vector<float> got(size_t(c.M * c.N));
  for (int64_t m = 0; m < c.M; ++m) {
    std::memcpy(&got[size_t(m * c.N)], &got_padded[size_t(m * ldy)], size_t(c.N) * 4);
    for (int64_t j = c.N; j < ldy; ++j) EXPECT_TRUE(std::isnan(got_padded[size_t(m * ldy + j)])) << "wrote padding";
  }
  const std::vector<float> want = reference(c, x, w, c.bias ? &bias : nullptr);
  // Products of bf16 values are exact in fp32, so the error is the bf16 rounding of y (2^-9 relative)
  // plus summation-order noise (tiny against the atol, scaled by the typical magnitude √K / 3).
  EXPECT_TRUE(all_close(got, want, 1e-2f, 1e-2f * rms(want)));
}

TEST(GemmTest, SmallShapesMatchCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  cuda::Gemm gemm;
  const GemmCase cases[] = {
      {1, 256, 128},
      {1, 4096, 4096},
      {16, 1000, 520, 0, 0, 0, true},
      {33, 136, 96, 8, 0, 4},
      {7, 100, 60, 0, 4, 0, true},
      {5, 31, 17},  // odd sizes: 2-byte-aligned rows
      {128, 768, 256, 0, 0, 0, true},
  };
  for (const GemmCase& c : cases) run_case(gemm, c, rng);
}

TEST(GemmTest, PrefillShapesMatchCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  cuda::Gemm gemm;
  run_case(gemm, {512, 1024, 4096}, rng);
  run_case(gemm, {1024, 576, 1536, 0, 0, 0, true}, rng);
}

TEST(GemmTest, PlansAreCachedPerShape) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(7);
  cuda::Gemm gemm;
  run_case(gemm, {4, 64, 32}, rng);
  run_case(gemm, {4, 64, 32}, rng);
  EXPECT_EQ(gemm.cached_plans(), 1u);
  run_case(gemm, {5, 64, 32}, rng);
  run_case(gemm, {5, 64, 32, 0, 0, 0, true}, rng);
  EXPECT_EQ(gemm.cached_plans(), 3u);
}

TEST(GemmTest, TimedAndHeuristicChoicesBothMatchCpu) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(13);
  const GemmCase c{256, 1024, 1024, 0, 0, 0, true};
  cuda::Gemm timed;  // GemmTuning::kTimed is the default
  run_case(timed, c, rng);
  EXPECT_EQ(timed.timed_plans(), 1u) << "cuBLASLt offered one algorithm only for this shape";
  run_case(timed, c, rng);  // the chosen algorithm, launched without timing
  EXPECT_EQ(timed.timed_plans(), 1u);
  cuda::Gemm heuristic(cuda::Gemm::kDefaultWorkspaceBytes, cuda::GemmTuning::kHeuristic);
  run_case(heuristic, c, rng);
  EXPECT_EQ(heuristic.cached_plans(), 1u);
  EXPECT_EQ(heuristic.timed_plans(), 0u);
}

// A shape whose operands fit in L2 is timed after evicting L2 with scratch memory; on a device with no
// room left for the scratch (a serving process holds most of it) the candidates are timed back to
// back instead, and the product is still right.
TEST(GemmTest, TimedChoiceWithoutRoomForScratch) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(17);
  cuda::Gemm gemm;
  run_case(gemm, {8, 256, 128}, rng);  // tuned with the scratch; cuBLASLt's modules are loaded
  int device = 0, l2 = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  // Leave 1.5 L2's worth free: less than the scratch (twice L2), enough for this test's buffers.
  ASSERT_GT(free_bytes, 3 * size_t(l2));
  cuda::DeviceBuffer<std::byte> hog(free_bytes - 3 * size_t(l2) / 2);
  run_case(gemm, {16, 512, 256, 0, 0, 0, true}, rng);
  EXPECT_EQ(gemm.timed_plans(), 2u);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(GemmTest, ShapeCheckNamesCaller) {
  SKIP_WITHOUT_GPU();
  cuda::Gemm gemm;
  DeviceBuffer<bf16> buf(64);
  try {
    gemm.run({.x = buf.data(), .w = buf.data(), .y = buf.data(), .M = 2, .N = 4, .K = 8, .ldx = 4}, nullptr);
    FAIL() << "no exception";
  } catch (const InternalError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("gemm_test.cu"), std::string::npos) << what;
    EXPECT_NE(what.find("ldx < K"), std::string::npos) << what;
  }
  EXPECT_THROW(gemm.run({.x = buf.data(), .w = nullptr, .y = buf.data(), .M = 1, .N = 4, .K = 8}, nullptr),
               InternalError);
  EXPECT_NO_THROW(gemm.run({.M = 0, .N = 4, .K = 8}, nullptr));  // M = 0: nothing to do
}

TEST(GemmTest, RejectsOutputOverlappingAnInput) {
  SKIP_WITHOUT_GPU();
  cuda::Gemm gemm;
  DeviceBuffer<bf16> buf(1024);
  bf16* x = buf.data();            // [2][8]: elements 0 .. 15
  bf16* w = buf.data() + 64;       // [4][8]: 64 .. 95
  bf16* bias = buf.data() + 128;   // [4]: 128 .. 131
  const auto rejected = [&](bf16* y, const bf16* b) {
    try {
      gemm.run({.x = x, .w = w, .y = y, .bias = b, .M = 2, .N = 4, .K = 8}, nullptr);
      return false;
    } catch (const InternalError& e) {
      EXPECT_NE(std::string(e.what()).find("overlaps"), std::string::npos) << e.what();
      return true;
    }
  };
  EXPECT_TRUE(rejected(x + 8, nullptr));       // y's first row is x's second
  EXPECT_TRUE(rejected(w + 24, nullptr));      // y's first row is w's last
  EXPECT_TRUE(rejected(bias - 6, bias));       // y's last two elements are the bias's first
  EXPECT_FALSE(rejected(x + 16, nullptr));     // y right after x: no overlap
  EXPECT_FALSE(rejected(bias + 4, bias));      // right after the bias
  CUDA_CHECK(cudaDeviceSynchronize());
}

TEST(GemmTest, ReplaysUnderCudaGraph) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(11);
  cuda::Gemm gemm;
  const GemmCase c{8, 512, 256, 0, 0, 0, true};
  const Bf16Data x = random_bf16(size_t(c.M * c.K), rng, -1.0f, 1.0f);
  const Bf16Data w = random_bf16(size_t(c.N * c.K), rng, -1.0f, 1.0f);
  const Bf16Data bias = random_bf16(size_t(c.N), rng, -1.0f, 1.0f);
  auto dx = to_device(x);
  auto dw = to_device(w);
  auto dbias = to_device(bias);
  auto dy = poisoned<bf16>(size_t(c.M * c.N));
  const cuda::GemmArgs args{.x = dx.data(), .w = dw.data(), .y = dy.data(), .bias = dbias.data(), .M = c.M, .N = c.N,
                            .K = c.K};
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  gemm.run(args, stream);  // plans the shape outside the capture
  CUDA_CHECK(cudaStreamSynchronize(stream));
  dy.fill_bytes(0xff, stream);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  gemm.run(args, stream);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_CHECK(cudaGraphLaunch(exec, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<float> want = reference(c, x, w, &bias);
  EXPECT_TRUE(all_close(download_bf16(dy), want, 1e-2f, 1e-2f * rms(want)));
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  CUDA_CHECK(cudaStreamDestroy(stream));
}

// A shape first met inside a capture takes the heuristic's algorithm there (no timing can run) and
// is timed at its next run outside the capture; both give the product.
TEST(GemmTest, FirstRunInsideCaptureTimesLater) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(17);
  cuda::Gemm gemm;
  const GemmCase c{128, 1024, 512};
  const Bf16Data x = random_bf16(size_t(c.M * c.K), rng, -1.0f, 1.0f);
  const Bf16Data w = random_bf16(size_t(c.N * c.K), rng, -1.0f, 1.0f);
  auto dx = to_device(x);
  auto dw = to_device(w);
  auto dy = poisoned<bf16>(size_t(c.M * c.N));
  const cuda::GemmArgs args{.x = dx.data(), .w = dw.data(), .y = dy.data(), .M = c.M, .N = c.N, .K = c.K};
  const std::vector<float> want = reference(c, x, w, nullptr);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  gemm.run(args, stream);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  EXPECT_EQ(gemm.cached_plans(), 1u);
  EXPECT_EQ(gemm.timed_plans(), 0u);
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_CHECK(cudaGraphLaunch(exec, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  EXPECT_TRUE(all_close(download_bf16(dy), want, 1e-2f, 1e-2f * rms(want)));
  dy.fill_bytes(0xff, stream);
  gemm.run(args, stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));
  EXPECT_EQ(gemm.timed_plans(), 1u) << "cuBLASLt offered one algorithm only for this shape";
  EXPECT_TRUE(all_close(download_bf16(dy), want, 1e-2f, 1e-2f * rms(want)));
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace sparseserve::gpu_test
