// kernels/cuda/rope vs kernels/cpu/ops rope on the same bf16-rounded inputs, positions up to 131072.
// Both compute angles to full fp32 accuracy, so the bf16 results agree bit for bit except where the
// last fp32 bits decide a rounding: the test asks ≥ 99.9% identical and every element within one bf16
// step (+1e-5). (fp32 sincosf(pos · f) would be off by up to 4e-3 rad at 131072 and fail the first bound.)
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/rope.h"
#include "ops_test_util.h"

namespace sparseserve::gpu_test {
namespace {

namespace cuda = kernels::cuda;
namespace cpu = kernels::cpu;

struct RopeCase {
  int64_t rows, n_heads, head_dim, rope_dim, extra_stride;
};

std::vector<float> inv_freqs(int64_t rope_dim, double theta) {
  std::vector<float> f(size_t(rope_dim / 2));
  for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(std::pow(theta, -2.0 * double(i) / double(rope_dim)));
  return f;
}

void run_case(const RopeCase& c, bool interleaved, int32_t max_pos, std::mt19937_64& rng, bool unaligned = false) {
  SCOPED_TRACE("rows " + std::to_string(c.rows) + " heads " + std::to_string(c.n_heads) + " head_dim " +
               std::to_string(c.head_dim) + " rope_dim " + std::to_string(c.rope_dim) + " stride +" +
               std::to_string(c.extra_stride) + (interleaved ? " interleaved" : " half") +
               (unaligned ? " unaligned" : ""));
  const int64_t stride = c.n_heads * c.head_dim + c.extra_stride;
  const int64_t shift = unaligned ? 1 : 0;
  Bf16Data x = random_bf16(size_t(c.rows * stride + shift), rng, -2.0f, 2.0f);
  std::vector<int32_t> pos(size_t(c.rows));
  std::uniform_int_distribution<int32_t> pd(0, max_pos);
  for (auto& p : pos) p = pd(rng);
  pos[0] = max_pos;
  const std::vector<float> freq = inv_freqs(c.rope_dim, 500000.0);

  auto dx = to_device(x);
  auto dpos = to_device<int32_t>(pos);
  auto dfreq = to_device<float>(freq);
  cuda::rope(dx.data() + shift, stride, dpos.data(), c.rows, c.n_heads, c.head_dim, c.rope_dim, dfreq.data(),
             interleaved, nullptr);
  const std::vector<uint16_t> got = dx.download<uint16_t>();

  std::vector<float> want = x.f;
  cpu::rope(want.data() + shift, stride, pos.data(), c.rows, c.n_heads, c.head_dim, c.rope_dim, freq.data(),
            interleaved);
  const Bf16Data want16 = to_bf16(want);

  size_t differ = 0, off = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] == want16.bits[i]) continue;
    ++differ;
    const float g = bf16_to_f32(got[i]), w = want16.f[i];
    // One bf16 step at |w| (2^(exponent - 7)), plus the fp32 noise of a rotation of values ≤ 2
    // near cancellation.
    const float step = std::ldexp(1.0f, std::ilogb(std::max(std::fabs(w), 1e-30f)) - 7);
    if (!std::isfinite(g) || std::fabs(g - w) > step + 1e-5f) ++off;
  }
  EXPECT_EQ(off, 0u) << "elements more than one bf16 step away";
  EXPECT_LE(double(differ), 1e-3 * double(got.size()) + 1.0) << differ << " of " << got.size() << " differ";
}

TEST(RopeTest, ShapeCheckNamesCaller) {
  try {
    cuda::rope(nullptr, 64, nullptr, 1, 1, 64, 65, nullptr, false, nullptr);  // odd rope_dim
    FAIL() << "no exception";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("rope_test.cu"), std::string::npos) << e.what();
  }
}

TEST(RopeTest, SmallShapesMatchCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const RopeCase cases[] = {{1, 1, 64, 64, 0},    {3, 8, 128, 128, 0},  {5, 4, 128, 128, 2 * 4 * 128},
                            {7, 3, 64, 32, 0},    {2, 2, 128, 64, 8},   {4, 2, 96, 96, 0},
                            {3, 5, 80, 80, 3},    {2, 1, 64, 20, 0}};
  for (const RopeCase& c : cases) {
    for (const bool interleaved : {false, true}) run_case(c, interleaved, 4096, rng);
  }
  run_case({3, 8, 128, 128, 0}, false, 4096, rng, /*unaligned=*/true);
  run_case({3, 8, 128, 128, 0}, true, 4096, rng, /*unaligned=*/true);
}

TEST(RopeTest, LargePositionsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (const int64_t head_dim : {64, 128}) {
    for (const bool interleaved : {false, true}) {
      run_case({256, 32, head_dim, head_dim, 2 * 8 * head_dim}, interleaved, 131072, rng);
      run_case({64, 8, head_dim, head_dim, 0}, interleaved, 131072, rng);
    }
  }
}

}  // namespace
}  // namespace sparseserve::gpu_test
