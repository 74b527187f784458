// kernels/cuda/norm vs kernels/cpu/ops (rmsnorm, add_rmsnorm) on the same bf16-rounded inputs.
#include <gtest/gtest.h>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/norm.h"
#include "ops_test_util.h"

namespace sparseserve::gpu_test {
namespace {

namespace cuda = kernels::cuda;
namespace cpu = kernels::cpu;

constexpr float kRtol = 1e-2f;

struct NormShape {
  int64_t rows, width;
};
const NormShape kShapes[] = {{1, 1},   {1, 7},    {3, 8},    {5, 100},  {64, 576},
                             {2, 4096}, {17, 4104}, {4, 5000}, {257, 64}, {1, 16384}};

TEST(NormTest, ShapeCheckNamesCaller) {
  // Host-side checks run before any CUDA call, so this needs no device.
  try {
    cuda::rmsnorm(nullptr, nullptr, nullptr, -1, 8, 1e-5f, nullptr);
    FAIL() << "no exception";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("norm_test.cu"), std::string::npos) << e.what();
  }
}

TEST(NormTest, SmallRmsnormMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (const auto& [rows, width] : kShapes) {
    for (const float eps : {1e-5f, 1e-6f}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " width " + std::to_string(width));
      const float scale = std::uniform_real_distribution<float>(0.05f, 20.0f)(rng);
      const Bf16Data x = random_bf16(size_t(rows * width), rng, -scale, scale);
      const Bf16Data w = random_bf16(size_t(width), rng, 0.5f, 1.5f);
      auto dx = to_device(x);
      auto dw = to_device(w);
      auto dout = poisoned<bf16>(x.size());
      cuda::rmsnorm(dx.data(), dw.data(), dout.data(), rows, width, eps, nullptr);
      const std::vector<float> got = download_bf16(dout);

      std::vector<float> want(x.size());
      cpu::rmsnorm(x.f.data(), w.f.data(), want.data(), rows, width, eps);
      EXPECT_TRUE(all_close(got, want, kRtol, 1e-3f * rms(want)));

      // In place (out == x) gives the same result.
      cuda::rmsnorm(dx.data(), dw.data(), dx.data(), rows, width, eps, nullptr);
      EXPECT_EQ(dx.download<uint16_t>(), dout.download<uint16_t>());
    }
  }
}

TEST(NormTest, UnalignedRowsTakeScalarPath) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t rows = 9, width = 1024;
  const Bf16Data x = random_bf16(size_t(rows * width + 1), rng, -3.0f, 3.0f);
  const Bf16Data w = random_bf16(size_t(width + 1), rng, 0.5f, 1.5f);
  auto dx = to_device(x);
  auto dw = to_device(w);
  auto dout = poisoned<bf16>(x.size());
  // Offsets of one element: 2-byte aligned pointers with width % 8 == 0.
  cuda::rmsnorm(dx.data() + 1, dw.data() + 1, dout.data() + 1, rows, width, 1e-5f, nullptr);
  const std::vector<float> got = download_bf16(dout);
  std::vector<float> want(x.size());
  cpu::rmsnorm(x.f.data() + 1, w.f.data() + 1, want.data() + 1, rows, width, 1e-5f);
  EXPECT_TRUE(std::isnan(got[0])) << "wrote before the output";
  EXPECT_TRUE(all_close(std::span(got).subspan(1), std::span(want).subspan(1), kRtol, 1e-3f * rms(want)));
}

TEST(NormTest, SmallAddRmsnormMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (const auto& [rows, width] : kShapes) {
    SCOPED_TRACE("rows " + std::to_string(rows) + " width " + std::to_string(width));
    const Bf16Data res = random_bf16(size_t(rows * width), rng, -4.0f, 4.0f);
    const Bf16Data delta = random_bf16(size_t(rows * width), rng, -1.0f, 1.0f);
    const Bf16Data w = random_bf16(size_t(width), rng, 0.5f, 1.5f);
    auto dres = to_device(res);
    auto ddelta = to_device(delta);
    auto dw = to_device(w);
    auto dout = poisoned<bf16>(res.size());
    cuda::add_rmsnorm(dres.data(), ddelta.data(), dw.data(), dout.data(), rows, width, 1e-5f, nullptr);

    // The new residual is bf16(res + delta), bit for bit.
    std::vector<float> sum(res.size());
    for (size_t i = 0; i < sum.size(); ++i) sum[i] = res.f[i] + delta.f[i];
    const Bf16Data want_res = to_bf16(sum);
    EXPECT_EQ(dres.download<uint16_t>(), want_res.bits);

    // The output is the norm of the rounded residual.
    std::vector<float> want(res.size());
    cpu::rmsnorm(want_res.f.data(), w.f.data(), want.data(), rows, width, 1e-5f);
    EXPECT_TRUE(all_close(download_bf16(dout), want, kRtol, 1e-3f * rms(want)));
  }
}

// Host-only: the overlap checks come before any CUDA call, so these pointers are never dereferenced.
TEST(NormChecks, RejectOverlappingOut) {
  const auto at = [](uintptr_t bytes) { return reinterpret_cast<bf16*>(uintptr_t{1} << 20 | bytes); };
  const auto rejected = [](auto&& call, const char* what) {
    try {
      call();
      ADD_FAILURE() << "no exception: " << what;
    } catch (const InternalError& e) {
      EXPECT_NE(std::string(e.what()).find("norm_test.cu"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  // [2][8] bf16 arrays: 32 bytes each; the weight 16 bytes.
  bf16 *x = at(0), *delta = at(1024), *w = at(2048);
  rejected([&] { cuda::add_rmsnorm(x, delta, w, x, 2, 8, 1e-5f, nullptr); }, "out overlaps residual");
  rejected([&] { cuda::add_rmsnorm(x, delta, w, at(16), 2, 8, 1e-5f, nullptr); }, "out overlaps residual");
  rejected([&] { cuda::add_rmsnorm(x, delta, w, at(1024 + 16), 2, 8, 1e-5f, nullptr); }, "overlaps delta");
  rejected([&] { cuda::rmsnorm(x, w, at(16), 2, 8, 1e-5f, nullptr); }, "overlaps x without being x");
  rejected([&] { cuda::rmsnorm(x, w, at(2048 - 16), 2, 8, 1e-5f, nullptr); }, "out overlaps weight");
}

}  // namespace
}  // namespace sparseserve::gpu_test
