// kernels/cuda/page_lists vs its CPU twin (kernels/cpu/page_lists) on fresh random inputs: a store
// filled by scatter_pairs, then random store, staged and page-only runs of lengths 0 to 700 into a
// poisoned output.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "kernels/cpu/page_lists.h"
#include "kernels/cuda/page_lists.h"
#include "ops_test_util.h"

namespace sparseserve::gpu_test {
namespace {

namespace cuda = kernels::cuda;
namespace cpu = kernels::cpu;

TEST(PageListsGpu, SmallRandomRunsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (const int32_t P : {16, 64}) {
    const int32_t lanes = 12, blocks = 800;
    // The store: every entry set by scatter_pairs, in a random order.
    std::vector<int32_t> order(static_cast<size_t>(lanes * blocks));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<int32_t> pairs;
    for (const int32_t i : order) {
      pairs.push_back(i);
      pairs.push_back(static_cast<int32_t>(rng() % 1000000));
    }
    std::vector<int32_t> want_store(order.size(), -1);
    cpu::scatter_pairs(pairs, want_store);
    cuda::DeviceBuffer<int32_t> store(order.size());
    store.fill_bytes(0xff, nullptr);
    const cuda::DeviceBuffer<int32_t> dpairs{std::span<const int32_t>(pairs)};
    cuda::scatter_pairs(dpairs.data(), static_cast<int32_t>(pairs.size() / 2), store.data(), nullptr);
    ASSERT_EQ(store.download(), want_store);

    std::vector<int32_t> staged(5000);
    for (int32_t& x : staged) x = static_cast<int32_t>(rng() % 100000);
    std::vector<cpu::KeyRun> runs;
    int32_t at = 0;
    for (int i = 0; i < 300; ++i) {
      const int kind = static_cast<int>(rng() % 3);
      const auto count = static_cast<int32_t>(i % 50 == 0 ? 0 : rng() % (i % 7 == 0 ? 700 : 40));
      cpu::KeyRun r;
      r.count = count;
      r.pages_at = at;
      if (kind < 2) {  // store run: blocks first .. first + count − 1 of a lane, end inside the last block
        r.src = static_cast<int32_t>(rng() % lanes) * blocks;
        r.first = static_cast<int32_t>(rng() % (blocks - count));
        r.end = (r.first + std::max(count, 1) - 1) * P + 1 + static_cast<int32_t>(rng() % P);
      } else {  // staged run, positions 700 past its pages
        r.src = static_cast<int32_t>(rng() % 2000);
        r.src_step = 700 + static_cast<int32_t>(rng() % 3);
      }
      if (kind != 1) {  // with positions and lengths
        r.pos0_at = 200000 + at;
        r.len_at = 400000 + at;
      }
      at += count + static_cast<int32_t>(rng() % 3);  // gaps stay poisoned
      runs.push_back(r);
    }
    cuda::DeviceBuffer<int32_t> out(600000);
    out.fill_bytes(0xa5, nullptr);
    std::vector<int32_t> want = out.download();  // entries no run writes keep the poison
    cpu::expand_key_runs(runs, want_store, staged, P, want);
    const cuda::DeviceBuffer<cpu::KeyRun> druns{std::span<const cpu::KeyRun>(runs)};
    const cuda::DeviceBuffer<int32_t> dstaged{std::span<const int32_t>(staged)};
    cuda::expand_key_runs(druns.data(), static_cast<int32_t>(runs.size()), store.data(), dstaged.data(), P,
                          out.data(), nullptr);
    EXPECT_EQ(out.download(), want) << "P " << P;
  }
}

}  // namespace
}  // namespace sparseserve::gpu_test
