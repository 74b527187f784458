// Block layouts of the ggml types and their dequantization to f32.
//
// Every multi-byte field is little-endian (the host is assumed little-endian: x86-64, aarch64).
// "f16" is IEEE binary16, widened to f32 exactly. The arithmetic below follows gguf-py's numpy
// dequantizer (gguf/quants.py) operation for operation, in f32, so the results are bit-identical:
// products and sums are separate roundings, never fused. (With finite f16 scales every product
// here is exact in f32 - at most 11 + 6 + 6 significant bits - so only the final add/sub rounds;
// still, both compilers fuse a*b+c into an FMA under -march=x86-64-v3 by default, and numpy never
// does, so contraction is switched off for this file.)
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/cpu/ggml_types.h"

#include <array>
#include <cstring>
#include <limits>
#include <optional>
#include <string>

#include "common/errors.h"
#include "common/half.h"

namespace sparseserve::kernels {
namespace {

constexpr int64_t kQK = 32;     // elements per block of the "legacy" types (Q4_0 .. Q8_1)
constexpr int64_t kQK_K = 256;  // elements per super-block of the k-quants

using BlockFn = void (*)(const uint8_t* block, float* y);

struct Entry {
  TypeTraits traits;
  BlockFn dequant_block;  // null when not dequantizable (plain types are handled separately)
};

inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  return fp16_to_f32(h);
}

// ---- 32-element blocks -------------------------------------------------------------------------

// Q4_0, 18 bytes: f16 d | u8 qs[16]. Element j < 16 is the low nibble of qs[j], element j + 16 the
// high nibble. y = d * (nibble - 8).
void dequant_q4_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

// Q4_1, 20 bytes: f16 d | f16 m | u8 qs[16]. Nibbles as Q4_0. y = (d * nibble) + m.
void dequant_q4_1(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

// Fifth bit of element j: bit j of the little-endian u32 qh.
inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Q5_0, 22 bytes: f16 d | u32 qh | u8 qs[16]. q = nibble (as Q4_0) | bit j of qh << 4.
// y = d * (q - 16).
void dequant_q5_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint32_t qh = load_u32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

// Q5_1, 24 bytes: f16 d | f16 m | u32 qh | u8 qs[16]. q as Q5_0. y = (d * q) + m.
void dequant_q5_1(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  const uint32_t qh = load_u32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

// Q8_0, 34 bytes: f16 d | i8 qs[32]. y = qs * d.
void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

// ---- 256-element super-blocks (k-quants) -------------------------------------------------------

// Q2_K, 84 bytes: u8 scales[16] | u8 qs[64] | f16 d | f16 dmin.
// Element e = 128*h + 32*s + l (h < 2, s < 4, l < 32): q = (qs[32*h + l] >> 2*s) & 3.
// Sub-block i = e / 16 has scale d * (scales[i] & 15) and min dmin * (scales[i] >> 4).
// y = scale * q - min.
void dequant_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = load_f16(b + 80);
  const float dmin = load_f16(b + 82);
  for (int e = 0; e < kQK_K; ++e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32;
    const int q = (qs[32 * h + l] >> (2 * s)) & 3;
    const int i = e / 16;
    const float dl = d * static_cast<float>(scales[i] & 0x0F);
    const float ml = dmin * static_cast<float>(scales[i] >> 4);
    y[e] = dl * static_cast<float>(q) - ml;
  }
}

// Q3_K, 110 bytes: u8 hmask[32] | u8 qs[64] | u8 scales[12] | f16 d.
// Element e = 128*h + 32*s + l: low bits (qs[32*h + l] >> 2*s) & 3,
//   high bit (hmask[l] >> (4*h + s)) & 1; q = low - 4 when the high bit is 0, else low.
// The 16 six-bit scales (sub-block i = e / 16), each minus 32:
//   low nibble from scales[i % 8] (>> 4 when i >= 8),
//   top two bits (scales[8 + i % 4] >> 2*(i/4)) & 3.
// y = (d * scale) * q.
void dequant_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = load_f16(b + 108);
  std::array<float, 16> dl{};
  for (int i = 0; i < 16; ++i) {
    const int lo = (i < 8 ? sc[i] : sc[i - 8] >> 4) & 0x0F;
    const int hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 0x03;
    dl[i] = d * static_cast<float>((lo | (hi << 4)) - 32);
  }
  for (int e = 0; e < kQK_K; ++e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32;
    const int low = (qs[32 * h + l] >> (2 * s)) & 3;
    const int high = (hmask[l] >> (4 * h + s)) & 1;
    y[e] = dl[e / 16] * static_cast<float>(low - (high ? 0 : 4));
  }
}

// The 12-byte scale block shared by Q4_K and Q5_K: eight 6-bit scales and eight 6-bit mins.
//  byte 0..3:  scale[i] in bits 0..5, top bits of scale[4 + i] in bits 6..7
//  byte 4..7:  min[i] in bits 0..5, top bits of min[4 + i] in bits 6..7
//  byte 8..11: low nibble = low 4 bits of scale[4 + i], high nibble = low 4 bits of min[4 + i]
void unpack_k_scales(const uint8_t* s, int* scale, int* min) {
  for (int i = 0; i < 4; ++i) {
    scale[i] = s[i] & 0x3F;
    min[i] = s[4 + i] & 0x3F;
    scale[4 + i] = (s[8 + i] & 0x0F) | ((s[i] >> 2) & 0x30);
    min[4 + i] = (s[8 + i] >> 4) | ((s[4 + i] >> 2) & 0x30);
  }
}

// Q4_K, 144 bytes: f16 d | f16 dmin | u8 scales[12] | u8 qs[128].
// Element e = 64*h + 32*s + l (h < 4, s < 2, l < 32): q = (qs[32*h + l] >> 4*s) & 15.
// Sub-block i = e / 32: y = (d * scale[i]) * q - (dmin * min[i]).
void dequant_q4_k(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  int scale[8], min[8];
  unpack_k_scales(b + 4, scale, min);
  const uint8_t* qs = b + 16;
  for (int e = 0; e < kQK_K; ++e) {
    const int h = e / 64, s = (e / 32) % 2, l = e % 32, i = e / 32;
    const int q = (qs[32 * h + l] >> (4 * s)) & 0x0F;
    const float dl = d * static_cast<float>(scale[i]);
    const float ml = dmin * static_cast<float>(min[i]);
    y[e] = dl * static_cast<float>(q) - ml;
  }
}

// Q5_K, 176 bytes: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128].
// Low nibble as Q4_K; fifth bit of element e = 32*i + l is (qh[l] >> i) & 1.
// y = (d * scale[i]) * q - (dmin * min[i]).
void dequant_q5_k(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  int scale[8], min[8];
  unpack_k_scales(b + 4, scale, min);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int e = 0; e < kQK_K; ++e) {
    const int h = e / 64, s = (e / 32) % 2, l = e % 32, i = e / 32;
    const int q = ((qs[32 * h + l] >> (4 * s)) & 0x0F) | (((qh[l] >> i) & 1) << 4);
    const float dl = d * static_cast<float>(scale[i]);
    const float ml = dmin * static_cast<float>(min[i]);
    y[e] = dl * static_cast<float>(q) - ml;
  }
}

// Q6_K, 210 bytes: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d.
// Element e = 128*h + r (h < 2, r < 128): low nibble (ql[64*h + r % 64] >> 4*(r / 64)) & 15,
// top two bits (qh[32*h + r % 32] >> 2*(r / 32)) & 3; q = (low | top << 4) - 32.
// y = (d * scales[e / 16]) * q.
void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const uint8_t* sc = b + 192;
  const float d = load_f16(b + 208);
  for (int e = 0; e < kQK_K; ++e) {
    const int h = e / 128, r = e % 128;
    const int low = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
    const int top = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 0x03;
    const float dl = d * static_cast<float>(static_cast<int8_t>(sc[e / 16]));
    y[e] = dl * static_cast<float>((low | (top << 4)) - 32);
  }
}

// Traits indexed by the raw type number; names, block sizes and bytes as ggml/gguf-py define them.
constexpr size_t kMaxType = 31;
constexpr std::array<std::optional<Entry>, kMaxType> make_table() {
  std::array<std::optional<Entry>, kMaxType> t{};
  auto set = [&t](GgmlType type, std::string_view name, int64_t elems, size_t bytes, BlockFn fn,
                  bool plain_dequant) {
    t[static_cast<size_t>(type)] = Entry{{name, elems, bytes, fn != nullptr || plain_dequant}, fn};
  };
  set(GgmlType::F32, "F32", 1, 4, nullptr, true);
  set(GgmlType::F16, "F16", 1, 2, nullptr, true);
  set(GgmlType::Q4_0, "Q4_0", kQK, 2 + 16, dequant_q4_0, false);
  set(GgmlType::Q4_1, "Q4_1", kQK, 2 + 2 + 16, dequant_q4_1, false);
  set(GgmlType::Q5_0, "Q5_0", kQK, 2 + 4 + 16, dequant_q5_0, false);
  set(GgmlType::Q5_1, "Q5_1", kQK, 2 + 2 + 4 + 16, dequant_q5_1, false);
  set(GgmlType::Q8_0, "Q8_0", kQK, 2 + 32, dequant_q8_0, false);
  // Q8_1: f16 d | f16 s | i8 qs[32] = 36 bytes, as ggml's block_q8_1 (gguf-py's table says 40,
  // from the older f32 layout; no file stores Q8_1, it is an activation format).
  set(GgmlType::Q8_1, "Q8_1", kQK, 2 + 2 + 32, nullptr, false);
  set(GgmlType::Q2_K, "Q2_K", kQK_K, 16 + 64 + 2 + 2, dequant_q2_k, false);
  set(GgmlType::Q3_K, "Q3_K", kQK_K, 32 + 64 + 12 + 2, dequant_q3_k, false);
  set(GgmlType::Q4_K, "Q4_K", kQK_K, 2 + 2 + 12 + 128, dequant_q4_k, false);
  set(GgmlType::Q5_K, "Q5_K", kQK_K, 2 + 2 + 12 + 32 + 128, dequant_q5_k, false);
  set(GgmlType::Q6_K, "Q6_K", kQK_K, 128 + 64 + 16 + 2, dequant_q6_k, false);
  // Q8_K: f32 d | i8 qs[256] | i16 bsums[16] = 292 bytes.
  set(GgmlType::Q8_K, "Q8_K", kQK_K, 4 + 256 + 32, nullptr, false);
  set(GgmlType::I8, "I8", 1, 1, nullptr, false);
  set(GgmlType::I16, "I16", 1, 2, nullptr, false);
  set(GgmlType::I32, "I32", 1, 4, nullptr, false);
  set(GgmlType::I64, "I64", 1, 8, nullptr, false);
  set(GgmlType::F64, "F64", 1, 8, nullptr, false);
  set(GgmlType::BF16, "BF16", 1, 2, nullptr, true);
  return t;
}

constexpr auto kTable = make_table();

const Entry& entry(GgmlType type) {
  const auto raw = static_cast<uint32_t>(type);
  if (!is_known_type(raw)) throw InvalidArgument("unknown ggml type " + std::to_string(raw));
  return *kTable[raw];
}

}  // namespace

bool is_known_type(uint32_t raw) { return raw < kMaxType && kTable[raw].has_value(); }

const TypeTraits& type_traits(GgmlType type) { return entry(type).traits; }

size_t row_bytes(GgmlType type, int64_t n) {
  const TypeTraits& t = type_traits(type);
  if (n < 0) throw InvalidArgument("negative element count " + std::to_string(n));
  if (n % t.block_elems != 0) {
    throw InvalidArgument(std::to_string(n) + " elements is not a multiple of the " +
                          std::string(t.name) + " block size " + std::to_string(t.block_elems));
  }
  const auto blocks = static_cast<uint64_t>(n / t.block_elems);
  if (blocks > std::numeric_limits<size_t>::max() / t.block_bytes) {
    throw InvalidArgument(std::to_string(n) + " elements of " + std::string(t.name) +
                          " overflow the byte count");
  }
  return static_cast<size_t>(blocks) * t.block_bytes;
}

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  const Entry& e = entry(type);
  if (!e.traits.dequantizable) {
    throw InvalidArgument("cannot dequantize type " + std::string(e.traits.name));
  }
  (void)row_bytes(type, n);  // validates n
  const auto* p = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::F32: std::memcpy(dst, p, static_cast<size_t>(n) * sizeof(float)); return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = load_f16(p + 2 * i);
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, p + 2 * i, sizeof b);
        dst[i] = bf16_to_f32(b);
      }
      return;
    default: break;
  }
  const int64_t blocks = n / e.traits.block_elems;
  for (int64_t i = 0; i < blocks; ++i) {
    e.dequant_block(p + static_cast<size_t>(i) * e.traits.block_bytes,
                    dst + i * e.traits.block_elems);
  }
}

}  // namespace sparseserve::kernels
