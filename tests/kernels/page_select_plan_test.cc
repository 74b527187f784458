// Page selection's host-side plan (kernels/cuda/page_select_plan.h) against the CPU twin's selection
// (kernels/cpu/page_select.h): the page count per sequence, the CSR offsets and the geometry checks.
// Pure host code: runs everywhere, CI without a GPU included.
#include "kernels/cuda/page_select_plan.h"

#include <gtest/gtest.h>

#include <climits>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/errors.h"
#include "kernels/cpu/page_select.h"

namespace sparseserve::kernels::cuda {
namespace {

TEST(PageSelectPlan, SizeEqualsCpuSelection) {
  // selected_page_count is the size of select_pages for every geometry.
  for (int32_t P : {1, 16, 64}) {
    for (int64_t sink : {0, 1, 63, 64, 65, 300}) {
      for (int64_t budget : {0, 1, 64, 100, 1024, 5000}) {
        for (int64_t len = 0; len < 700; len += 1 + len / 7) {
          const std::vector<float> scores(size_t((len + P - 1) / P), 0.0f);
          const size_t want = cpu::select_pages(scores, len, P, sink, budget).size();
          ASSERT_EQ(size_t(selected_page_count(len, {P, 1, sink, budget})), want)
              << "P " << P << " sink " << sink << " budget " << budget << " len " << len;
        }
      }
    }
  }
}

TEST(PageSelectPlan, IndptrChecksConfigLengthsAndTotal) {
  const std::vector<int32_t> lens{100, 0, 5000};
  const std::vector<int32_t> indptr = plan_selected_indptr(lens, {64, 16, 64, 1024});
  ASSERT_EQ(indptr.size(), lens.size() + 1);
  EXPECT_EQ(indptr[0], 0);
  for (size_t r = 0; r < lens.size(); ++r) {
    EXPECT_EQ(indptr[r + 1] - indptr[r], selected_page_count(lens[r], {64, 16, 64, 1024})) << "row " << r;
  }
  const auto expect_rejected = [](std::span<const int32_t> seq_lens, const PageSelectConfig& c) {
    try {
      (void)plan_selected_indptr(seq_lens, c);
      FAIL() << "no exception";
    } catch (const InternalError& e) {
      EXPECT_NE(std::string(e.what()).find("page_select_plan_test.cc"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("plan_selected_indptr"), std::string::npos) << e.what();
    }
  };
  expect_rejected(lens, {});                   // page_tokens 0: once a division by zero
  expect_rejected(lens, {64, 48, 64, 1024});   // 48 does not divide 64
  expect_rejected(lens, {64, 16, -1, 1024});   // negative sink
  expect_rejected(lens, {64, 16, 64, -5});     // negative budget
  expect_rejected(std::vector<int32_t>{10, -1}, {64, 16, 64, 1024});
  // 17 rows of 2^31 - 1 tokens keep 2^27 pages each with P = 16 and an unbounded budget: 2.28e9 entries.
  expect_rejected(std::vector<int32_t>(17, INT32_MAX), {16, 16, 0, int64_t{1} << 40});
}

}  // namespace
}  // namespace sparseserve::kernels::cuda
