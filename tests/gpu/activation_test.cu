// kernels/cuda/activation vs kernels/cpu/ops silu_mul, and the embedding gather vs a host copy.
#include <gtest/gtest.h>

#include <cstring>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/activation.h"
#include "ops_test_util.h"

namespace sparseserve::gpu_test {
namespace {

namespace cuda = kernels::cuda;
namespace cpu = kernels::cpu;

TEST(ActivationTest, SmallSiluMulMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {3, 5}, {2, 8}, {7, 13}, {128, 1000}, {4, 14336}, {33, 3}};
  for (const auto& [rows, width] : shapes) {
    for (const bool unaligned : {false, true}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " width " + std::to_string(width) +
                   (unaligned ? " unaligned" : ""));
      const size_t shift = unaligned ? 1 : 0;
      const Bf16Data gu = random_bf16(size_t(rows * 2 * width) + shift, rng, -8.0f, 8.0f);
      auto dgu = to_device(gu);
      auto dout = poisoned<bf16>(size_t(rows * width) + shift);
      cuda::silu_mul(dgu.data() + shift, dout.data() + shift, rows, width, nullptr);
      const std::vector<float> got = download_bf16(dout);
      std::vector<float> want(size_t(rows * width));
      cpu::silu_mul(gu.f.data() + shift, want.data(), rows, width);
      if (unaligned) EXPECT_TRUE(std::isnan(got[0])) << "wrote before the output";
      EXPECT_TRUE(all_close(std::span(got).subspan(shift), want, 1e-2f, 1e-3f));
    }
  }
}

// Host-only: the check comes before any CUDA call, so these pointers are never dereferenced.
TEST(ActivationChecks, SiluMulRejectsOutOverlappingGateUp) {
  const auto at = [](uintptr_t bytes) { return reinterpret_cast<bf16*>(uintptr_t{1} << 20 | bytes); };
  // gate_up [2][16] bf16 = 64 bytes; out [2][8] = 32 bytes.
  for (const uintptr_t out : {uintptr_t{0}, uintptr_t{32}, uintptr_t{48}}) {
    try {
      cuda::silu_mul(at(0), at(out), 2, 8, nullptr);
      ADD_FAILURE() << "no exception for out at byte " << out;
    } catch (const InternalError& e) {
      EXPECT_NE(std::string(e.what()).find("out overlaps gate_up"), std::string::npos) << e.what();
    }
  }
}

TEST(ActivationTest, CheckTokenIds) {
  const std::vector<int32_t> good{0, 5, 9};
  EXPECT_NO_THROW(cuda::check_token_ids(good, 10));
  const std::vector<int32_t> negative{0, -1};
  EXPECT_THROW(cuda::check_token_ids(negative, 10), InvalidArgument);
  const std::vector<int32_t> too_big{10};
  EXPECT_THROW(cuda::check_token_ids(too_big, 10), InvalidArgument);
}

TEST(ActivationTest, SmallEmbeddingGatherCopiesRows) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (const int64_t width : {7, 64, 4096}) {
    for (const int64_t rows : {1, 33}) {
      SCOPED_TRACE("width " + std::to_string(width) + " rows " + std::to_string(rows));
      const int64_t vocab = 1000;
      const Bf16Data table = random_bf16(size_t(vocab * width), rng, -1.0f, 1.0f);
      std::vector<int32_t> ids(static_cast<size_t>(rows));
      std::uniform_int_distribution<int32_t> id(0, int32_t(vocab - 1));
      for (auto& t : ids) t = id(rng);
      ids.back() = int32_t(vocab - 1);
      cuda::check_token_ids(ids, vocab);
      auto dtable = to_device(table);
      auto dids = to_device<int32_t>(ids);
      auto dout = poisoned<bf16>(size_t(rows * width));
      cuda::embedding_gather(dtable.data(), vocab, width, dids.data(), rows, dout.data(), nullptr);
      const std::vector<uint16_t> got = dout.download<uint16_t>();
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_EQ(0, std::memcmp(got.data() + r * width, table.bits.data() + ids[size_t(r)] * width,
                                 size_t(width) * 2))
            << "row " << r;
      }
    }
  }
}

// Widening is exact: every element equals common/half.h's bf16_to_f32 bit for bit (NaN and ±∞
// included), over sizes that end mid-block.
TEST(ActivationTest, SmallWidenBf16IsExact) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (const int64_t n : {1, 255, 257, 49152 * 3 + 5}) {
    std::vector<uint16_t> bits(static_cast<size_t>(n));
    std::uniform_int_distribution<uint32_t> any(0, 0xffff);
    for (auto& b : bits) b = static_cast<uint16_t>(any(rng));
    bits[0] = 0x7f80;  // +∞
    auto din = to_device<bf16>(bits);
    auto dout = poisoned<float>(static_cast<size_t>(n));
    cuda::widen_bf16(din.data(), dout.data(), n, nullptr);
    const std::vector<float> got = dout.download();
    for (int64_t i = 0; i < n; ++i) {
      const float want = bf16_to_f32(bits[static_cast<size_t>(i)]);
      ASSERT_EQ(0, std::memcmp(&got[static_cast<size_t>(i)], &want, 4)) << "n " << n << " element " << i;
    }
  }
}

TEST(ActivationChecks, WidenBf16RejectsOverlap) {
  auto* p = reinterpret_cast<bf16*>(uintptr_t{4096});
  EXPECT_THROW(cuda::widen_bf16(p, reinterpret_cast<float*>(p), 8, nullptr), InternalError);
}

TEST(ActivationTest, SmallEmbeddingGatherOutOfRangeIdGivesNanRow) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(1);
  const int64_t vocab = 10, width = 16;
  const Bf16Data table = random_bf16(size_t(vocab * width), rng, -1.0f, 1.0f);
  const std::vector<int32_t> ids{3, 10, -1};  // contract broken on purpose: must not read out of bounds
  auto dtable = to_device(table);
  auto dids = to_device<int32_t>(ids);
  auto dout = poisoned<bf16>(size_t(3 * width));
  cuda::embedding_gather(dtable.data(), vocab, width, dids.data(), 3, dout.data(), nullptr);
  const std::vector<float> got = download_bf16(dout);
  for (int64_t j = 0; j < width; ++j) {
    EXPECT_EQ(got[size_t(j)], table.f[size_t(3 * width + j)]);
    EXPECT_TRUE(std::isnan(got[size_t(width + j)]));
    EXPECT_TRUE(std::isnan(got[size_t(2 * width + j)]));
  }
}

}  // namespace
}  // namespace sparseserve::gpu_test
