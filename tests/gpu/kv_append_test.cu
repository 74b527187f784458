// kernels/cuda/kv_append vs engine/cpu_kv_storage (CpuKvStorage::write) on a simulated batch of lanes:
// a prefill chunk then decode steps per lane, rows of a batch in random order, some lanes without
// metadata (streaming), plus rows out of range that must be skipped; with several KV heads a row
// (one launch for all heads of a layer) the lanes come in groups that share positions. Pools start
// poisoned, so slots never written must stay NaN. kmin/kmax are bf16 on the device and must equal the CPU's fp32 values
// exactly (min/max of bf16 keys).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "engine/cpu_kv_storage.h"
#include "kernels/cuda/kv_append.h"
#include "ops_test_util.h"

namespace sparseserve::gpu_test {
namespace {

namespace cuda = kernels::cuda;

struct KvCase {
  int32_t P, LP, D;
  int64_t extra_stride;  // row stride = heads · D + extra (≥ 0; odd → unaligned rows, scalar path)
  int32_t heads = 1;     // KV heads a row (divides the 6 lanes)
};

struct Row {
  int32_t group, pos;  // lanes group·heads .. group·heads + heads − 1
};

void run_case(const KvCase& c, std::mt19937_64& rng) {
  SCOPED_TRACE("P " + std::to_string(c.P) + " LP " + std::to_string(c.LP) + " D " + std::to_string(c.D) +
               " stride +" + std::to_string(c.extra_stride) + " heads " + std::to_string(c.heads));
  const int32_t num_pages = 96, lanes = 6, pages_per_lane = 12, SP = c.P / c.LP, H = c.heads, groups = lanes / H;
  const int64_t stride = int64_t{H} * c.D + c.extra_stride;
  std::vector<int32_t> pool_pages(static_cast<size_t>(num_pages));
  std::iota(pool_pages.begin(), pool_pages.end(), 0);
  std::shuffle(pool_pages.begin(), pool_pages.end(), rng);
  auto page_of = [&](int32_t lane, int32_t pos) { return pool_pages[size_t(lane * pages_per_lane + pos / c.P)]; };
  // The last group (lanes 4, 5 with one head a row): streaming, no metadata.
  auto has_meta = [&](int32_t group) { return groups == 1 || group < groups - 1; };

  CpuKvStorage cpu(num_pages, c.P, c.LP, c.D);
  auto dk = poisoned<bf16>(size_t(num_pages) * c.P * c.D);
  auto dv = poisoned<bf16>(dk.size());
  auto dmin = poisoned<bf16>(size_t(num_pages) * SP * c.D);
  auto dmax = poisoned<bf16>(dmin.size());
  const cuda::KvPoolView pool{dk.data(), dv.data(), dmin.data(), dmax.data(), num_pages, c.P, c.LP, c.D};
  std::vector<uint8_t> slot_written(size_t(num_pages) * c.P, 0), sub_written(size_t(num_pages) * SP, 0);

  std::vector<int32_t> len(size_t(groups), 0);
  const int32_t capacity = pages_per_lane * c.P;
  for (int round = 0; round < 6; ++round) {
    std::vector<Row> rows;
    for (int32_t g = 0; g < groups; ++g) {
      const int32_t want = round == 0 ? std::uniform_int_distribution<int32_t>(1, 2 * c.P + 7)(rng)
                                      : std::uniform_int_distribution<int32_t>(0, 3)(rng);
      const int32_t n = std::min(want, capacity - len[size_t(g)]);
      for (int32_t i = 0; i < n; ++i) rows.push_back({g, len[size_t(g)] + i});
      len[size_t(g)] += n;
    }
    std::shuffle(rows.begin(), rows.end(), rng);
    const size_t n_valid = rows.size();
    Bf16Data keys = random_bf16((n_valid + 2) * size_t(stride), rng, -3.0f, 3.0f);
    for (size_t i = 0; i < keys.size(); i += 13) {  // zeros of both signs: min/max must not depend on order
      keys.bits[i] = (i / 13) % 2 == 0 ? 0x8000 : 0x0000;
      keys.f[i] = (i / 13) % 2 == 0 ? -0.0f : 0.0f;
    }
    const Bf16Data values = random_bf16(keys.size(), rng, -3.0f, 3.0f);
    // page_ids [heads][R] over the R = n_valid + 2 rows; the last two rows out of range: skipped by
    // the kernel, never written anywhere.
    const size_t R = n_valid + 2;
    std::vector<int32_t> page_ids(size_t(H) * R), offsets;
    std::vector<uint8_t> meta;
    for (size_t i = 0; i < n_valid; ++i) {
      for (int32_t h = 0; h < H; ++h) page_ids[size_t(h) * R + i] = page_of(rows[i].group * H + h, rows[i].pos);
      offsets.push_back(rows[i].pos % c.P);
      meta.push_back(has_meta(rows[i].group) ? 1 : 0);
    }
    for (int32_t h = 0; h < H; ++h) {
      page_ids[size_t(h) * R + n_valid] = num_pages;
      page_ids[size_t(h) * R + n_valid + 1] = 0;
    }
    offsets.insert(offsets.end(), {0, c.P});
    meta.insert(meta.end(), {1, 1});

    auto dkeys = to_device(keys);
    auto dvalues = to_device(values);
    auto dpages = to_device<int32_t>(page_ids);
    auto doffsets = to_device<int32_t>(offsets);
    auto dmeta = to_device<uint8_t>(meta);
    const cuda::KvAppendRows append{dkeys.data(), dvalues.data(), stride, stride, dpages.data(), doffsets.data(),
                                    dmeta.data(), int64_t(R), H};
    cuda::kv_append(pool, append, nullptr);

    // CPU twin: the same rows in position order within each lane.
    std::vector<size_t> order(n_valid);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return rows[a].group != rows[b].group ? rows[a].group < rows[b].group : rows[a].pos < rows[b].pos;
    });
    for (size_t i : order) {
      for (int32_t h = 0; h < H; ++h) {
        const int32_t page = page_ids[size_t(h) * R + i];
        const size_t at = i * size_t(stride) + size_t(h) * size_t(c.D);
        cpu.write(page, offsets[i], &keys.f[at], &values.f[at], meta[i] != 0);
        slot_written[size_t(page) * c.P + size_t(offsets[i])] = 1;
        if (meta[i]) sub_written[size_t(page) * SP + size_t(offsets[i] / c.LP)] = 1;
      }
    }

    const std::vector<float> gk = download_bf16(dk), gv = download_bf16(dv);
    const std::vector<float> gmin = download_bf16(dmin), gmax = download_bf16(dmax);
    size_t bad_kv = 0, bad_meta = 0, stray = 0;
    for (int32_t page = 0; page < num_pages; ++page) {
      for (int32_t off = 0; off < c.P; ++off) {
        const size_t base = (size_t(page) * c.P + size_t(off)) * size_t(c.D);
        const bool written = slot_written[size_t(page) * c.P + size_t(off)] != 0;
        for (int32_t d = 0; d < c.D; ++d) {
          if (!written) {
            stray += !std::isnan(gk[base + size_t(d)]) || !std::isnan(gv[base + size_t(d)]);
          } else {
            bad_kv += gk[base + size_t(d)] != cpu.k(page, off)[d] || gv[base + size_t(d)] != cpu.v(page, off)[d];
          }
        }
      }
      for (int32_t s = 0; s < SP; ++s) {
        const size_t base = (size_t(page) * SP + size_t(s)) * size_t(c.D);
        const bool written = sub_written[size_t(page) * SP + size_t(s)] != 0;
        for (int32_t d = 0; d < c.D; ++d) {
          if (!written) {
            stray += !std::isnan(gmin[base + size_t(d)]) || !std::isnan(gmax[base + size_t(d)]);
          } else {
            bad_meta += gmin[base + size_t(d)] != cpu.kmin(page)[s * c.D + d] ||
                        gmax[base + size_t(d)] != cpu.kmax(page)[s * c.D + d];
          }
        }
      }
    }
    ASSERT_EQ(bad_kv, 0u) << "K/V values differ in round " << round;
    ASSERT_EQ(bad_meta, 0u) << "kmin/kmax differ in round " << round;
    ASSERT_EQ(stray, 0u) << "writes outside the appended slots in round " << round;
  }
}

TEST(KvAppendTest, SmallBatchesMatchCpuStorage) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const KvCase cases[] = {{64, 16, 128, 0},    {16, 16, 64, 3 * 64}, {32, 8, 128, 256}, {64, 16, 64, 0},
                          {16, 4, 64, 1},      {8, 8, 40, 0},        {64, 16, 128, 0, 2}, {16, 16, 64, 8, 3},
                          {32, 8, 64, 1, 6},   {16, 4, 40, 0, 3}};
  for (const KvCase& c : cases) run_case(c, rng);
}

TEST(KvAppendTest, ShapeCheckNamesCaller) {
  bf16* p = reinterpret_cast<bf16*>(uintptr_t{256});  // never dereferenced: the checks come first
  const cuda::KvPoolView pool{p, p, nullptr, nullptr, 4, 64, 24, 128};  // 24 does not divide 64
  try {
    cuda::kv_append(pool, {}, nullptr);
    FAIL() << "no exception";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("kv_append_test.cu"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sparseserve::gpu_test
