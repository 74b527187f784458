// kernels/cuda/page_copy vs its CPU twin (kernels/cpu/page_copy.h) on random pools and copy lists:
// whole pages, token ranges and zero fills, head dims 64 and 128, lists past one CTA per copy. The
// whole pools are compared bit for bit, so a write outside a copy's range shows too.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "kernels/cpu/page_copy.h"
#include "kernels/cuda/page_copy.h"
#include "ops_test_util.h"

namespace sparseserve::gpu_test {
namespace {

namespace cuda = kernels::cuda;
namespace cpu = kernels::cpu;

TEST(PageCopyTest, SmallCopiesMatchTheCpuTwinBitForBit) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  struct Shape {
    int32_t pages, page_tokens, head_dim, copies;
  };
  for (const Shape& sh : {Shape{16, 16, 64, 5}, Shape{64, 64, 128, 20}, Shape{200, 32, 64, 90}, Shape{9, 128, 128, 4}}) {
    SCOPED_TRACE("pages " + std::to_string(sh.pages) + " page_tokens " + std::to_string(sh.page_tokens) +
                 " head_dim " + std::to_string(sh.head_dim));
    const size_t n = size_t(sh.pages) * size_t(sh.page_tokens) * size_t(sh.head_dim);
    const Bf16Data k = random_bf16(n, rng, -4.0f, 4.0f), v = random_bf16(n, rng, -4.0f, 4.0f);
    // Sources and destinations from disjoint pages (as the prefix cache's are): a shuffled split.
    std::vector<int32_t> ids(static_cast<size_t>(sh.pages));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    const auto half = static_cast<size_t>(sh.pages / 2);
    std::vector<cpu::PageRangeCopy> copies;
    for (int32_t i = 0; i < sh.copies && static_cast<size_t>(i) < half; ++i) {
      cpu::PageRangeCopy c;
      c.dst = ids[half + static_cast<size_t>(i)];
      c.src = rng() % 4 == 0 ? -1 : ids[rng() % half];  // a quarter zero-fill
      if (rng() % 2 == 0) {
        c.offset = 0;
        c.tokens = sh.page_tokens;
      } else {
        c.offset = static_cast<int32_t>(rng() % static_cast<uint64_t>(sh.page_tokens));
        c.tokens = static_cast<int32_t>(rng() % static_cast<uint64_t>(sh.page_tokens - c.offset + 1));
      }
      copies.push_back(c);
    }
    auto dk = to_device(k), dv = to_device(v);
    auto dcopies = to_device<cpu::PageRangeCopy>(copies);
    cuda::copy_page_ranges(dk.data(), dv.data(), sh.page_tokens, sh.head_dim, dcopies.data(),
                           static_cast<int32_t>(copies.size()), nullptr);
    std::vector<uint16_t> wk = k.bits, wv = v.bits;
    cpu::copy_page_ranges(wk.data(), wv.data(), sh.page_tokens, sh.head_dim, std::span<const cpu::PageRangeCopy>(copies));
    EXPECT_EQ(dk.download<uint16_t>(), wk);
    EXPECT_EQ(dv.download<uint16_t>(), wv);
    EXPECT_NE(wk, k.bits) << "the copies changed nothing: the comparison cannot fail";
  }
}

// More copies than a grid holds CTAs (65535): the grid-stride loop.
TEST(PageCopyTest, ListsLongerThanTheGridAreAllApplied) {
  SKIP_WITHOUT_GPU();
  constexpr int32_t kCopies = 70000, P = 16, D = 64;
  const size_t n = size_t(2 * kCopies) * P * D;
  std::vector<uint16_t> ones(n / 2, 0x3f80);  // 1.0 in bf16: the source half
  std::vector<uint16_t> pool(n, 0);
  std::copy(ones.begin(), ones.end(), pool.begin());
  auto dk = to_device<bf16>(pool), dv = to_device<bf16>(pool);
  std::vector<cpu::PageRangeCopy> copies;
  for (int32_t i = 0; i < kCopies; ++i) copies.push_back({i, kCopies + i, 0, P});
  auto dcopies = to_device<cpu::PageRangeCopy>(copies);
  cuda::copy_page_ranges(dk.data(), dv.data(), P, D, dcopies.data(), kCopies, nullptr);
  const std::vector<uint16_t> got = dk.download<uint16_t>();
  EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](uint16_t x) { return x == 0x3f80; }));
}

TEST(PageCopyChecks, HeadDimsNotAMultipleOfEightAreRefused) {
  EXPECT_THROW(cuda::copy_page_ranges(nullptr, nullptr, 16, 60, nullptr, 1, nullptr), InternalError);
}

}  // namespace
}  // namespace sparseserve::gpu_test
