#include "kvcache/capacity.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

#include "common/errors.h"

namespace sparseserve::kvcache {
namespace {

PageShape shape(int32_t head_dim, int32_t page_tokens, int32_t bpe, bool meta) {
  PageShape s;
  s.head_dim = head_dim;
  s.page_tokens = page_tokens;
  s.logical_page_tokens = 16;
  s.bytes_per_element = bpe;
  s.with_metadata = meta;
  return s;
}

TEST(Capacity, PageBytes) {
  // head_dim 128, P 64, bf16: K+V 64*128*2*2; min/max (64/16)*128*2*2.
  EXPECT_EQ(shape(128, 64, 2, false).page_bytes(), 32'768u);
  EXPECT_EQ(shape(128, 64, 2, true).page_bytes(), 32'768u + 2'048u);
  // CPU fp32, P 16: one logical sub-page.
  EXPECT_EQ(shape(8, 16, 4, true).page_bytes(), 16u * 8 * 2 * 4 + 1u * 8 * 2 * 4);
  PageShape s = shape(64, 128, 2, true);
  s.logical_page_tokens = 32;
  EXPECT_EQ(s.page_bytes(), 128u * 64 * 2 * 2 + 4u * 64 * 2 * 2);
}

TEST(Capacity, PageBytesRejectsBadShapes) {
  EXPECT_THROW(shape(0, 64, 2, true).page_bytes(), InvalidArgument);
  EXPECT_THROW(shape(128, 48, 2, true).page_bytes(), InvalidArgument);
  EXPECT_THROW(shape(128, 64, 0, true).page_bytes(), InvalidArgument);
  PageShape s = shape(128, 64, 2, true);
  s.logical_page_tokens = 24;
  EXPECT_THROW(s.page_bytes(), InvalidArgument);
  s.with_metadata = false;  // the sub-page size only matters with metadata
  EXPECT_EQ(s.page_bytes(), 32'768u);
}

TEST(Capacity, PagesForBudget) {
  const PageShape s = shape(128, 64, 2, true);
  const size_t page = s.page_bytes();
  EXPECT_EQ(pages_for_budget(page, s), 1);
  EXPECT_EQ(pages_for_budget(10 * page + page - 1, s), 10);
  EXPECT_THROW(pages_for_budget(page - 1, s), InvalidArgument);
  EXPECT_THROW(pages_for_budget(0, s), InvalidArgument);
  EXPECT_THROW(pages_for_budget(std::numeric_limits<size_t>::max(), shape(1, 16, 1, false)), InvalidArgument);
}

TEST(Capacity, ParseBytes) {
  EXPECT_EQ(parse_bytes("0"), 0u);
  EXPECT_EQ(parse_bytes("1048576"), 1'048'576u);
  EXPECT_EQ(parse_bytes("10B"), 10u);
  EXPECT_EQ(parse_bytes("1KB"), 1'000u);
  EXPECT_EQ(parse_bytes("1KiB"), 1'024u);
  EXPECT_EQ(parse_bytes("512MiB"), 512u << 20);
  EXPECT_EQ(parse_bytes("3MB"), 3'000'000u);
  EXPECT_EQ(parse_bytes("2GiB"), size_t{2} << 30);
  EXPECT_EQ(parse_bytes("16GB"), 16'000'000'000u);
  EXPECT_EQ(parse_bytes("1.5GB"), 1'500'000'000u);
  EXPECT_EQ(parse_bytes("0.5KiB"), 512u);
  EXPECT_EQ(parse_bytes("1.25MiB"), 1'310'720u);
  EXPECT_EQ(parse_bytes("1.1GiB"), 1'181'116'006u);  // 1181116006.4, rounded down
  EXPECT_EQ(parse_bytes("1.5"), 1u);
  EXPECT_EQ(parse_bytes("007KB"), 7'000u);
  EXPECT_EQ(parse_bytes("0.123456789GB"), 123'456'789u);
  EXPECT_EQ(parse_bytes("18446744073709551615"), std::numeric_limits<size_t>::max());
  EXPECT_EQ(parse_bytes("17179869183GiB"), (size_t{17179869183}) << 30);
}

TEST(Capacity, ParseBytesRejectsGarbage) {
  for (const char* bad : {"", "-1", "-1GiB", "+1", "abc", "GiB", "1 GiB", " 1GiB", "1GiB ", "1gib", "1kb", "1Kb", "1kB",
                          "1.GiB", ".5GiB", "1..5", "1.5.5", "1e9", "1TB", "1TiB", "1GiBB", "1,5GB", "0x10",
                          "1.0000000001GB", "18446744073709551616", "17179869184GiB", "99999999999999999999999"}) {
    EXPECT_THROW(parse_bytes(bad), InvalidArgument) << "'" << bad << "'";
  }
  EXPECT_THROW(parse_bytes(nullptr), InvalidArgument);
}

}  // namespace
}  // namespace sparseserve::kvcache
