// Type traits, row_bytes and dequantize_row against hand-computed values for each block layout.
// (Bit-exactness against gguf-py on random blocks is tests/python/test_dequant.py.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/errors.h"
#include "kernels/cpu/ggml_types.h"

namespace sparseserve::kernels {
namespace {

constexpr uint16_t kF16One = 0x3c00, kF16Half = 0x3800, kF16Two = 0x4000, kF16MinusOne = 0xbc00,
                   kF16Quarter = 0x3400, kF16Ten = 0x4900;

void put_u16(std::vector<uint8_t>& b, size_t at, uint16_t v) { std::memcpy(b.data() + at, &v, 2); }
void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) { std::memcpy(b.data() + at, &v, 4); }

std::vector<float> dequant(GgmlType type, const std::vector<uint8_t>& src, int64_t n) {
  EXPECT_EQ(src.size(), row_bytes(type, n));
  std::vector<float> out(static_cast<size_t>(n), std::nanf(""));  // poisoned
  dequantize_row(type, src.data(), out.data(), n);
  return out;
}

TEST(GgmlTypes, TraitsMatchGgml) {
  struct Row {
    GgmlType type;
    const char* name;
    int64_t elems;
    size_t bytes;
    bool dequantizable;
  };
  const Row rows[] = {
      {GgmlType::F32, "F32", 1, 4, true},       {GgmlType::F16, "F16", 1, 2, true},
      {GgmlType::Q4_0, "Q4_0", 32, 18, true},   {GgmlType::Q4_1, "Q4_1", 32, 20, true},
      {GgmlType::Q5_0, "Q5_0", 32, 22, true},   {GgmlType::Q5_1, "Q5_1", 32, 24, true},
      {GgmlType::Q8_0, "Q8_0", 32, 34, true},   {GgmlType::Q8_1, "Q8_1", 32, 36, false},
      {GgmlType::Q2_K, "Q2_K", 256, 84, true},  {GgmlType::Q3_K, "Q3_K", 256, 110, true},
      {GgmlType::Q4_K, "Q4_K", 256, 144, true}, {GgmlType::Q5_K, "Q5_K", 256, 176, true},
      {GgmlType::Q6_K, "Q6_K", 256, 210, true}, {GgmlType::Q8_K, "Q8_K", 256, 292, false},
      {GgmlType::I8, "I8", 1, 1, false},        {GgmlType::I16, "I16", 1, 2, false},
      {GgmlType::I32, "I32", 1, 4, false},      {GgmlType::I64, "I64", 1, 8, false},
      {GgmlType::F64, "F64", 1, 8, false},      {GgmlType::BF16, "BF16", 1, 2, true},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    EXPECT_TRUE(is_known_type(static_cast<uint32_t>(r.type)));
    const TypeTraits& t = type_traits(r.type);
    EXPECT_EQ(t.name, r.name);
    EXPECT_EQ(t.block_elems, r.elems);
    EXPECT_EQ(t.block_bytes, r.bytes);
    EXPECT_EQ(t.dequantizable, r.dequantizable);
  }
  for (uint32_t raw : {4u, 5u, 16u, 23u, 29u, 31u, 39u, 1000u, 0xffffffffu}) {
    EXPECT_FALSE(is_known_type(raw)) << raw;
  }
  EXPECT_THROW(type_traits(static_cast<GgmlType>(4)), InvalidArgument);
}

TEST(GgmlTypes, RowBytes) {
  EXPECT_EQ(row_bytes(GgmlType::F32, 0), 0u);
  EXPECT_EQ(row_bytes(GgmlType::F32, 576), 2304u);
  EXPECT_EQ(row_bytes(GgmlType::BF16, 3), 6u);
  EXPECT_EQ(row_bytes(GgmlType::Q4_1, 576), 18u * 20u);
  EXPECT_EQ(row_bytes(GgmlType::Q8_0, 576), 18u * 34u);
  EXPECT_EQ(row_bytes(GgmlType::Q4_K, 512), 288u);
  EXPECT_EQ(row_bytes(GgmlType::Q6_K, 256), 210u);
  EXPECT_THROW(row_bytes(GgmlType::Q4_0, 33), InvalidArgument);
  EXPECT_THROW(row_bytes(GgmlType::Q4_K, 32), InvalidArgument);
  EXPECT_THROW(row_bytes(GgmlType::F32, -1), InvalidArgument);
  EXPECT_THROW(row_bytes(static_cast<GgmlType>(99), 32), InvalidArgument);
  EXPECT_THROW(row_bytes(GgmlType::F32, std::numeric_limits<int64_t>::max()),
               InvalidArgument);  // overflow
  try {
    row_bytes(GgmlType::Q4_0, 33);
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "33 elements is not a multiple of the Q4_0 block size 32");
  }
}

TEST(GgmlTypes, DequantizeRejects) {
  std::vector<uint8_t> buf(1024);
  std::vector<float> out(256);
  EXPECT_THROW(dequantize_row(GgmlType::Q8_K, buf.data(), out.data(), 256), InvalidArgument);
  EXPECT_THROW(dequantize_row(GgmlType::I32, buf.data(), out.data(), 4), InvalidArgument);
  EXPECT_THROW(dequantize_row(GgmlType::Q4_0, buf.data(), out.data(), 16), InvalidArgument);
  EXPECT_THROW(dequantize_row(static_cast<GgmlType>(17), buf.data(), out.data(), 256),
               InvalidArgument);
}

TEST(Dequant, PlainTypes) {
  std::vector<uint8_t> f32(8);
  const float in[2] = {1.5f, -0.0f};
  std::memcpy(f32.data(), in, 8);
  auto y = dequant(GgmlType::F32, f32, 2);
  EXPECT_EQ(y[0], 1.5f);
  EXPECT_TRUE(std::signbit(y[1]));

  std::vector<uint8_t> f16(10);
  put_u16(f16, 0, kF16One);
  put_u16(f16, 2, 0xc000);  // -2
  put_u16(f16, 4, 0x0001);  // smallest subnormal, 2^-24
  put_u16(f16, 6, 0x7c00);  // +inf
  put_u16(f16, 8, 0x7bff);  // 65504, largest finite
  y = dequant(GgmlType::F16, f16, 5);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -2.0f);
  EXPECT_EQ(y[2], std::ldexp(1.0f, -24));
  EXPECT_EQ(y[3], std::numeric_limits<float>::infinity());
  EXPECT_EQ(y[4], 65504.0f);

  std::vector<uint8_t> bf16(4);
  put_u16(bf16, 0, 0x3f80);  // 1.0
  put_u16(bf16, 2, 0xc040);  // -3.0
  y = dequant(GgmlType::BF16, bf16, 2);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -3.0f);
}

// Q4_0: f16 d | qs[16]; y[j] = d * (lo(qs[j]) - 8), y[j + 16] = d * (hi(qs[j]) - 8).
TEST(Dequant, Q4_0) {
  std::vector<uint8_t> b(18);
  put_u16(b, 0, kF16Half);
  b[2] = 0xF0;
  b[2 + 15] = 0x9C;
  for (int j = 1; j < 15; ++j) b[2 + j] = 0x88;
  const auto y = dequant(GgmlType::Q4_0, b, 32);
  EXPECT_EQ(y[0], -4.0f);  // 0.5 * (0 - 8)
  EXPECT_EQ(y[16], 3.5f);  // 0.5 * (15 - 8)
  EXPECT_EQ(y[15], 2.0f);  // 0.5 * (12 - 8)
  EXPECT_EQ(y[31], 0.5f);  // 0.5 * (9 - 8)
  EXPECT_EQ(y[5], 0.0f);
}

// Q4_1: f16 d | f16 m | qs[16]; y = d * nibble + m.
TEST(Dequant, Q4_1) {
  std::vector<uint8_t> b(20);
  put_u16(b, 0, kF16Two);
  put_u16(b, 2, kF16MinusOne);
  b[4 + 3] = 0x5A;
  const auto y = dequant(GgmlType::Q4_1, b, 32);
  EXPECT_EQ(y[3], 19.0f);  // 2 * 10 - 1
  EXPECT_EQ(y[19], 9.0f);  // 2 * 5 - 1
  EXPECT_EQ(y[0], -1.0f);
}

// Q5_0: f16 d | u32 qh | qs[16]; q = nibble | (bit j of qh) << 4; y = d * (q - 16).
TEST(Dequant, Q5_0) {
  std::vector<uint8_t> b(22);
  put_u16(b, 0, kF16One);
  put_u32(b, 2, (1u << 1) | (1u << 17));
  b[6 + 1] = 0x32;
  const auto y = dequant(GgmlType::Q5_0, b, 32);
  EXPECT_EQ(y[1], 2.0f);   // (2 | 16) - 16
  EXPECT_EQ(y[17], 3.0f);  // (3 | 16) - 16
  EXPECT_EQ(y[0], -16.0f);
  EXPECT_EQ(y[16], -16.0f);
}

// Q5_1: f16 d | f16 m | u32 qh | qs[16]; y = d * q + m.
TEST(Dequant, Q5_1) {
  std::vector<uint8_t> b(24);
  put_u16(b, 0, kF16Half);
  put_u16(b, 2, kF16Ten);
  put_u32(b, 4, 1u << 31);
  b[8 + 15] = 0xF0;
  const auto y = dequant(GgmlType::Q5_1, b, 32);
  EXPECT_EQ(y[15], 10.0f);  // 0.5 * 0 + 10
  EXPECT_EQ(y[31], 25.5f);  // 0.5 * 31 + 10
}

// Q8_0: f16 d | i8 qs[32]; y = qs * d. Two blocks in a row.
TEST(Dequant, Q8_0TwoBlocks) {
  std::vector<uint8_t> b(68);
  put_u16(b, 0, kF16Quarter);
  b[2] = 0x80;       // -128
  b[2 + 31] = 0x7F;  // 127
  put_u16(b, 34, kF16Two);
  b[36] = 0xFF;  // -1
  const auto y = dequant(GgmlType::Q8_0, b, 64);
  EXPECT_EQ(y[0], -32.0f);
  EXPECT_EQ(y[31], 31.75f);
  EXPECT_EQ(y[32], -2.0f);
  EXPECT_EQ(y[33], 0.0f);
}

// Q2_K: scales[16] | qs[64] | f16 d | f16 dmin; e = 128h + 32s + l: q = (qs[32h + l] >> 2s) & 3;
// y = d * (scales[e/16] & 15) * q - dmin * (scales[e/16] >> 4).
TEST(Dequant, Q2_K) {
  std::vector<uint8_t> b(84);
  for (int i = 0; i < 16; ++i) b[i] = 0x23;  // scale 3, min 2
  b[16 + 0] = 0xE4;                          // q = 0, 1, 2, 3 for s = 0..3
  b[16 + 32] = 0x01;                         // h = 1, l = 0: q = 1 for s = 0
  put_u16(b, 80, kF16One);
  put_u16(b, 82, kF16Half);
  const auto y = dequant(GgmlType::Q2_K, b, 256);
  EXPECT_EQ(y[0], -1.0f);  // 3 * 0 - 1
  EXPECT_EQ(y[32], 2.0f);  // 3 * 1 - 1
  EXPECT_EQ(y[64], 5.0f);
  EXPECT_EQ(y[96], 8.0f);
  EXPECT_EQ(y[128], 2.0f);
  EXPECT_EQ(y[160], -1.0f);
}

// Q3_K: hmask[32] | qs[64] | scales[12] | f16 d; q = low 2 bits - (high bit clear ? 4 : 0).
TEST(Dequant, Q3_K) {
  std::vector<uint8_t> b(110);
  uint8_t* hmask = b.data();
  uint8_t* qs = b.data() + 32;
  uint8_t* sc = b.data() + 96;
  sc[0] = 0x51;  // scale 0 low nibble 1, scale 8 low nibble 5
  sc[8] = 0x12;  // scale 0 top bits 2 (33 - 32 = 1), scale 8 top bits 1 (21 - 32 = -11)
  put_u16(b, 108, kF16One);
  qs[0] = 0x03;     // e = 0: low 3
  hmask[0] = 0x11;  // e = 0 (bit 0) and e = 128 (bit 4) have the high bit
  qs[32] = 0x02;    // e = 128: low 2
  const auto y = dequant(GgmlType::Q3_K, b, 256);
  EXPECT_EQ(y[0], 3.0f);      // 1 * 3
  EXPECT_EQ(y[1], -4.0f);     // 1 * (0 - 4)
  EXPECT_EQ(y[128], -22.0f);  // -11 * 2
  EXPECT_EQ(y[32], 128.0f);   // scale 2 = -32, q = -4
}

// The shared K-quant scale block with scale[0] = 2, min[0] = 1, scale[4] = 35, min[4] = 17.
void put_k_scales(std::vector<uint8_t>& b) {
  b[4 + 0] = 0x82;  // scale[0] = 2, top bits of scale[4] = 2
  b[4 + 4] = 0x41;  // min[0] = 1, top bits of min[4] = 1
  b[4 + 8] = 0x13;  // low 4 bits: scale[4] = 3, min[4] = 1
}

// Q4_K: f16 d | f16 dmin | scales[12] | qs[128]; e = 64h + 32s + l: q = (qs[32h + l] >> 4s) & 15.
TEST(Dequant, Q4_K) {
  std::vector<uint8_t> b(144);
  put_u16(b, 0, kF16One);
  put_u16(b, 2, kF16One);
  put_k_scales(b);
  b[16 + 0] = 0x75;
  b[16 + 64] = 0x0A;
  const auto y = dequant(GgmlType::Q4_K, b, 256);
  EXPECT_EQ(y[0], 9.0f);      // 2 * 5 - 1
  EXPECT_EQ(y[1], -1.0f);     // 2 * 0 - 1
  EXPECT_EQ(y[32], 0.0f);     // sub-block 1: scale 0, min 0
  EXPECT_EQ(y[128], 333.0f);  // 35 * 10 - 17
}

// Q5_K: as Q4_K with qh[32] before qs; fifth bit of e = 32i + l is (qh[l] >> i) & 1.
TEST(Dequant, Q5_K) {
  std::vector<uint8_t> b(176);
  put_u16(b, 0, kF16One);
  put_u16(b, 2, kF16One);
  put_k_scales(b);
  b[16 + 0] = 0x11;  // qh[0]: bit 0 (e = 0) and bit 4 (e = 128)
  b[48 + 0] = 0x05;
  b[48 + 64] = 0x0A;
  const auto y = dequant(GgmlType::Q5_K, b, 256);
  EXPECT_EQ(y[0], 41.0f);     // 2 * 21 - 1
  EXPECT_EQ(y[128], 893.0f);  // 35 * 26 - 17
  EXPECT_EQ(y[1], -1.0f);
}

// Q6_K: ql[128] | qh[64] | i8 scales[16] | f16 d; e = 128h + r: low (ql[64h + r%64] >> 4(r/64)) &
// 15, top (qh[32h + r%32] >> 2(r/32)) & 3; y = d * scales[e/16] * ((low | top << 4) - 32).
TEST(Dequant, Q6_K) {
  std::vector<uint8_t> b(210);
  b[0] = 0x9F;         // ql[0]: e = 0 low 15, e = 64 low 9
  b[128] = 0x02;       // qh[0]: e = 0 top 2
  b[64] = 0x01;        // ql[64]: e = 128 low 1
  b[128 + 32] = 0x03;  // qh[32]: e = 128 top 3
  b[192 + 0] = 0xFE;   // scale -2 for e < 16
  b[192 + 4] = 1;      // e in [64, 80)
  b[192 + 8] = 3;      // e in [128, 144)
  put_u16(b, 208, kF16Half);
  const auto y = dequant(GgmlType::Q6_K, b, 256);
  EXPECT_EQ(y[0], -15.0f);   // 0.5 * -2 * (47 - 32)
  EXPECT_EQ(y[64], -11.5f);  // 0.5 * 1 * (9 - 32)
  EXPECT_EQ(y[128], 25.5f);  // 0.5 * 3 * (49 - 32)
  EXPECT_EQ(y[32], 0.0f);    // scale 0
}

// A row of several blocks dequantizes block by block: each block lands at its own offset.
TEST(Dequant, RowsAreConcatenatedBlocks) {
  for (GgmlType type :
       {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
        GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    const TypeTraits& t = type_traits(type);
    SCOPED_TRACE(t.name);
    const int64_t n = 3 * t.block_elems;
    std::vector<uint8_t> row(row_bytes(type, n));
    for (size_t i = 0; i < row.size(); ++i) row[i] = static_cast<uint8_t>(i * 131 + 7);
    // Keep every f16 scale finite: clear the exponent's top bit in every byte that may hold one.
    // (Harmless for quant bytes: any value is valid there.)
    for (size_t i = 1; i < row.size(); i += 2) row[i] &= 0x3F;
    const auto whole = dequant(type, row, n);
    for (int blk = 0; blk < 3; ++blk) {
      std::vector<uint8_t> one(row.begin() + static_cast<long>(blk * t.block_bytes),
                               row.begin() + static_cast<long>((blk + 1) * t.block_bytes));
      const auto part = dequant(type, one, t.block_elems);
      for (int64_t i = 0; i < t.block_elems; ++i) {
        ASSERT_EQ(std::memcmp(&part[i], &whole[blk * t.block_elems + i], 4), 0)
            << "block " << blk << " elem " << i;
      }
    }
  }
}

}  // namespace
}  // namespace sparseserve::kernels
