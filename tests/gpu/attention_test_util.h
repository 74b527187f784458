// Shared pieces of the attention kernels' GPU tests (tests/gpu/decode_*_test.cu,
// prefill_attention_test.cu): bf16 inputs with their exact float values, random draws, page lists,
// and the comparison of a kernel's bf16 output with its CPU twin's.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/half.h"
#include "kernels/cuda/cuda_check.h"
#include "ops_test_util.h"  // SKIP_WITHOUT_GPU

namespace sparseserve::gpu_test {

// bf16 values on the host: the bits the GPU reads and their exact float values the CPU twin reads.
struct Bf16Array {
  std::vector<uint16_t> bits;
  std::vector<float> f;
  explicit Bf16Array(size_t n = 0) : bits(n), f(n) {}
  void set(size_t i, float x) {
    bits[i] = f32_to_bf16(x);
    f[i] = bf16_to_f32(bits[i]);
  }
  void copy(size_t dst, const Bf16Array& from, size_t src) {
    bits[dst] = from.bits[src];
    f[dst] = from.f[src];
  }
};

// One row's page list (pool page ids, first positions, token counts).
struct RowPages {
  std::vector<int32_t> ids, pos0, len;
};

// Rows' page lists as one CSR list on the host (the layout of decode_attention.h KeyPageList).
struct HostPageLists {
  std::vector<int32_t> indptr{0}, ids, pos0, len;
  explicit HostPageLists(const std::vector<RowPages>& rows) {
    for (const RowPages& rp : rows) {
      ids.insert(ids.end(), rp.ids.begin(), rp.ids.end());
      pos0.insert(pos0.end(), rp.pos0.begin(), rp.pos0.end());
      len.insert(len.end(), rp.len.begin(), rp.len.end());
      indptr.push_back(static_cast<int32_t>(ids.size()));
    }
  }
};

inline Bf16Array random_bf16(size_t n, float scale, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-scale, scale);
  Bf16Array a(n);
  for (size_t i = 0; i < n; ++i) a.set(i, u(rng));
  return a;
}

inline int rand_int(std::mt19937& rng, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

// got_bits: bf16 output rows of D values ((token, head) rows); every element finite,
// ‖out − ref‖/‖ref‖ ≤ 1e-2 overall and ≤ 3e-2 per row (rows whose reference is near zero against a
// floor).
inline void expect_close(const std::vector<uint16_t>& got_bits, const std::vector<float>& ref, int32_t D,
                         const std::string& what) {
  ASSERT_EQ(got_bits.size(), ref.size());
  double err2 = 0.0, ref2 = 0.0;
  int bad_rows = 0, non_finite = 0;
  for (size_t r0 = 0; r0 < ref.size(); r0 += static_cast<size_t>(D)) {
    double e2 = 0.0, n2 = 0.0;
    for (size_t i = r0; i < r0 + static_cast<size_t>(D); ++i) {
      const float g = bf16_to_f32(got_bits[i]);
      if (!std::isfinite(g)) ++non_finite;
      e2 += (static_cast<double>(g) - ref[i]) * (static_cast<double>(g) - ref[i]);
      n2 += static_cast<double>(ref[i]) * ref[i];
    }
    err2 += e2;
    ref2 += n2;
    const double floor2 = 1e-4 * D;
    if (e2 > 9e-4 * std::max(n2, floor2)) {
      if (bad_rows < 5) {
        ADD_FAILURE() << what << ": (token, head) row " << r0 / static_cast<size_t>(D) << " rel err "
                      << std::sqrt(e2 / std::max(n2, floor2));
      }
      ++bad_rows;
    }
  }
  EXPECT_EQ(non_finite, 0) << what << ": non-finite outputs (unwritten or NaN)";
  EXPECT_EQ(bad_rows, 0) << what;
  EXPECT_LE(std::sqrt(err2 / std::max(ref2, 1e-30)), 1e-2) << what;
}

}  // namespace sparseserve::gpu_test
