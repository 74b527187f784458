// GGUF reader tests on synthetic images built in memory (every value type, nested arrays, v2/v3,
// custom alignment, several tensor types), every truncation of a valid image, one targeted
// corruption per check, and the real default model when it is present.
#include "engine/gguf.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/errors.h"

namespace sparseserve {
namespace {

using kernels::GgmlType;
using VType = GgufValue::Type;
using ::testing::HasSubstr;

// Little-endian byte sink; every put returns the offset it wrote at.
class Image {
 public:
  template <class T>
  size_t put(T v) {
    const size_t at = bytes.size();
    bytes.resize(at + sizeof(T));
    std::memcpy(bytes.data() + at, &v, sizeof(T));
    return at;
  }
  size_t put_str(std::string_view s) {
    const size_t at = put<uint64_t>(s.size());
    for (char c : s) bytes.push_back(static_cast<std::byte>(c));
    return at;
  }
  void pad_to(uint64_t align) {
    while (bytes.size() % align != 0) bytes.push_back(std::byte{0});
  }
  template <class T>
  void patch(size_t at, T v) {
    std::memcpy(bytes.data() + at, &v, sizeof(T));
  }
  std::vector<std::byte> bytes;
};

struct TensorSpec {
  std::string name;
  GgmlType type;
  std::vector<uint64_t> ne;     // innermost first, as stored
  std::vector<std::byte> data;  // written at the next aligned offset
};

// Offsets of the fields in a built image, so tests can corrupt them one at a time.
struct Built {
  std::vector<std::byte> bytes;
  size_t n_tensors_at = 0, n_kv_at = 0;
  std::vector<size_t> key_at;  // each key's length field
  struct TensorAt {
    size_t name, n_dims, ne0, type, offset;
  };
  std::vector<TensorAt> tensor_at;
  uint64_t data_start = 0;
  std::vector<uint64_t> data_offset;  // relative to data_start
};

struct Builder {
  uint32_t version = 3;
  uint64_t alignment = 32;  // layout alignment; add a general.alignment entry to declare another
  std::vector<std::pair<std::string, std::function<void(Image&)>>> kvs;  // writes type + value
  std::vector<TensorSpec> tensors;

  Built build() const {
    Image w;
    Built b;
    w.put<uint32_t>(0x46554747);
    w.put<uint32_t>(version);
    b.n_tensors_at = w.put<uint64_t>(tensors.size());
    b.n_kv_at = w.put<uint64_t>(kvs.size());
    for (const auto& [key, value] : kvs) {
      b.key_at.push_back(w.put_str(key));
      value(w);
    }
    uint64_t next = 0;
    for (const TensorSpec& t : tensors) {
      Built::TensorAt at{};
      at.name = w.put_str(t.name);
      at.n_dims = w.put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
      at.ne0 = w.bytes.size();
      for (uint64_t n : t.ne) w.put<uint64_t>(n);
      at.type = w.put<uint32_t>(static_cast<uint32_t>(t.type));
      at.offset = w.put<uint64_t>(next);
      b.tensor_at.push_back(at);
      b.data_offset.push_back(next);
      next = (next + t.data.size() + alignment - 1) / alignment * alignment;
    }
    if (!tensors.empty()) w.pad_to(alignment);  // a file without tensors ends after its metadata
    b.data_start = w.bytes.size();
    for (size_t i = 0; i < tensors.size(); ++i) {
      w.bytes.resize(b.data_start + b.data_offset[i]);  // padding between tensors
      w.bytes.insert(w.bytes.end(), tensors[i].data.begin(), tensors[i].data.end());
    }
    b.bytes = std::move(w.bytes);
    return b;
  }
};

// Value writers: type tag then payload.
template <class T>
std::function<void(Image&)> scalar(VType type, T v) {
  return [type, v](Image& w) {
    w.put<uint32_t>(static_cast<uint32_t>(type));
    w.put<T>(v);
  };
}
std::function<void(Image&)> str(std::string s) {
  return [s](Image& w) {
    w.put<uint32_t>(static_cast<uint32_t>(VType::STRING));
    w.put_str(s);
  };
}
// Array payload writer (no leading type tag), so arrays can nest.
std::function<void(Image&)> array_body(VType elem, uint64_t count,
                                       std::function<void(Image&)> items) {
  return [=](Image& w) {
    w.put<uint32_t>(static_cast<uint32_t>(elem));
    w.put<uint64_t>(count);
    items(w);
  };
}
std::function<void(Image&)> array(VType elem, uint64_t count, std::function<void(Image&)> items) {
  auto body = array_body(elem, count, std::move(items));
  return [body](Image& w) {
    w.put<uint32_t>(static_cast<uint32_t>(VType::ARRAY));
    body(w);
  };
}

std::vector<std::byte> filled(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 37 + seed) & 0xff);
  return v;
}

GgufFile parse(const std::vector<std::byte>& bytes) { return GgufFile::parse(bytes, "test.gguf"); }

// Parses and returns the ModelFileError problem text ("" when it parses).
std::string problem_of(const std::vector<std::byte>& bytes) {
  try {
    parse(bytes);
  } catch (const ModelFileError& e) {
    EXPECT_EQ(e.file(), "test.gguf");
    return e.problem();
  }
  return "";
}

Builder all_values_builder(uint32_t version) {
  Builder b;
  b.version = version;
  b.kvs = {
      {"v.u8", scalar<uint8_t>(VType::U8, 250)},
      {"v.i8", scalar<int8_t>(VType::I8, -120)},
      {"v.u16", scalar<uint16_t>(VType::U16, 65000)},
      {"v.i16", scalar<int16_t>(VType::I16, -32000)},
      {"v.u32", scalar<uint32_t>(VType::U32, 4000000000u)},
      {"v.i32", scalar<int32_t>(VType::I32, -2000000000)},
      {"v.u64", scalar<uint64_t>(VType::U64, (uint64_t{1} << 63) + 7)},
      {"v.i64", scalar<int64_t>(VType::I64, -(int64_t{1} << 62))},
      {"v.f32", scalar<float>(VType::F32, 1.25f)},
      {"v.f64", scalar<double>(VType::F64, -3.5e100)},
      {"v.bool", scalar<uint8_t>(VType::BOOL, 1)},
      {"v.false", scalar<uint8_t>(VType::BOOL, 0)},
      {"v.str", str("h\xc3\xa9llo")},
      {"v.empty_str", str("")},
      {"v.strings", array(VType::STRING, 3,
                          [](Image& w) {
                            w.put_str("<s>");
                            w.put_str("");
                            w.put_str("\xe2\x96\x81the");
                          })},
      {"v.floats", array(VType::F32, 2,
                         [](Image& w) {
                           w.put<float>(0.5f);
                           w.put<float>(-2.0f);
                         })},
      {"v.empty", array(VType::I32, 0, [](Image&) {})},
      {"v.nested", array(VType::ARRAY, 2,
                         [](Image& w) {
                           array_body(VType::U16, 2, [](Image& x) {
                             x.put<uint16_t>(1);
                             x.put<uint16_t>(2);
                           })(w);
                           array_body(VType::STRING, 1, [](Image& x) { x.put_str("z"); })(w);
                         })},
  };
  return b;
}

void check_all_values(const GgufFile& g) {
  EXPECT_EQ(g.metadata().size(), 18u);
  EXPECT_EQ(g.get_int("v.u8"), 250);
  EXPECT_EQ(g.get_int("v.i8"), -120);
  EXPECT_EQ(g.get_int("v.u16"), 65000);
  EXPECT_EQ(g.get_int("v.i16"), -32000);
  EXPECT_EQ(g.get_int("v.u32"), 4000000000);
  EXPECT_EQ(g.get_int("v.i32"), -2000000000);
  EXPECT_EQ(std::get<uint64_t>(g.find("v.u64")->value), (uint64_t{1} << 63) + 7);
  EXPECT_THROW(g.find("v.u64")->as_int(), InvalidArgument);  // beyond int64
  EXPECT_THROW(g.get_int("v.u64"), ModelFileError);
  EXPECT_EQ(g.get_int("v.i64"), -(int64_t{1} << 62));
  EXPECT_EQ(g.get_float("v.f32"), 1.25);
  EXPECT_EQ(g.get_float("v.f64"), -3.5e100);
  EXPECT_EQ(g.get_float("v.u8"), 250.0);  // integers widen to float
  EXPECT_TRUE(g.find("v.bool")->as_bool());
  EXPECT_FALSE(g.find("v.false")->as_bool());
  EXPECT_EQ(g.find("v.bool")->type, VType::BOOL);
  EXPECT_EQ(g.get_string("v.str"), "h\xc3\xa9llo");
  EXPECT_EQ(g.get_string("v.empty_str"), "");
  const auto& strings = g.find("v.strings")->as_array();
  ASSERT_EQ(strings.size(), 3u);
  EXPECT_EQ(strings[0].as_string(), "<s>");
  EXPECT_EQ(strings[1].as_string(), "");
  EXPECT_EQ(strings[2].as_string(), "\xe2\x96\x81the");
  const auto& floats = g.find("v.floats")->as_array();
  ASSERT_EQ(floats.size(), 2u);
  EXPECT_EQ(floats[0].type, VType::F32);
  EXPECT_EQ(floats[1].as_float(), -2.0);
  EXPECT_TRUE(g.find("v.empty")->as_array().empty());
  const auto& nested = g.find("v.nested")->as_array();
  ASSERT_EQ(nested.size(), 2u);
  ASSERT_EQ(nested[0].as_array().size(), 2u);
  EXPECT_EQ(nested[0].as_array()[1].as_int(), 2);
  EXPECT_EQ(nested[0].as_array()[1].type, VType::U16);
  EXPECT_EQ(nested[1].as_array()[0].as_string(), "z");
  EXPECT_TRUE(g.tensors().empty());
}

TEST(Gguf, ParsesEveryValueTypeV3) {
  const GgufFile g = parse(all_values_builder(3).build().bytes);
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 32u);
  check_all_values(g);
}

TEST(Gguf, ParsesEveryValueTypeV2) {
  const GgufFile g = parse(all_values_builder(2).build().bytes);
  EXPECT_EQ(g.version(), 2u);
  check_all_values(g);
}

TEST(Gguf, TypedLookupsNameTheKey) {
  const GgufFile g = parse(all_values_builder(3).build().bytes);
  EXPECT_EQ(g.find("absent"), nullptr);
  EXPECT_EQ(g.opt_int("absent"), std::nullopt);
  EXPECT_EQ(g.opt_string("absent"), std::nullopt);
  EXPECT_EQ(g.opt_float("absent"), std::nullopt);
  EXPECT_EQ(g.opt_int("v.u16"), 65000);
  EXPECT_EQ(g.opt_string("v.str"), "h\xc3\xa9llo");
  EXPECT_EQ(g.opt_float("v.f32"), 1.25);
  try {
    g.get_int("v.str");
    FAIL() << "expected ModelFileError";
  } catch (const ModelFileError& e) {
    EXPECT_EQ(e.file(), "test.gguf");
    EXPECT_THAT(e.problem(), HasSubstr("metadata key 'v.str'"));
    EXPECT_THAT(e.problem(), HasSubstr("expected an integer"));
  }
  EXPECT_THROW(g.opt_int("v.str"), ModelFileError);  // present with the wrong type
  try {
    g.get_string("missing.key");
    FAIL() << "expected ModelFileError";
  } catch (const ModelFileError& e) {
    EXPECT_EQ(e.problem(), "metadata key 'missing.key' is missing");
  }
  EXPECT_THROW(g.find("v.u8")->as_string(), InvalidArgument);
  EXPECT_THROW(g.find("v.str")->as_array(), InvalidArgument);
  EXPECT_THROW(g.find("v.u8")->as_bool(), InvalidArgument);
  EXPECT_THROW(g.find("v.strings")->as_float(), InvalidArgument);
}

// Several tensor types, 1-D to 4-D, declared alignment 64.
Builder tensors_builder() {
  Builder b;
  b.alignment = 64;
  b.kvs = {{"general.architecture", str("llama")},
           {"general.alignment", scalar<uint32_t>(VType::U32, 64)}};
  b.tensors = {
      {"norm.weight", GgmlType::F32, {5}, filled(20, 1)},
      {"blk.0.attn_q.weight", GgmlType::Q4_0, {64, 3}, filled(2 * 18 * 3, 2)},
      {"half", GgmlType::F16, {3, 2, 2}, filled(24, 3)},
      {"token_embd.weight", GgmlType::Q8_0, {32, 2, 1, 2}, filled(34 * 4, 4)},
      {"blk.0.ffn_down.weight", GgmlType::Q4_K, {256, 2}, filled(144 * 2, 5)},
      {"output.weight", GgmlType::F32, {4, 8}, filled(128, 6)},
  };
  return b;
}

TEST(Gguf, TensorInfosShapesAndViews) {
  const Built built = tensors_builder().build();
  const GgufFile g = parse(built.bytes);
  EXPECT_EQ(g.alignment(), 64u);
  EXPECT_EQ(built.data_start % 64, 0u);
  ASSERT_EQ(g.tensors().size(), 6u);
  const Builder spec = tensors_builder();
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const TensorView& t = g.tensors()[i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, spec.tensors[i].name);
    EXPECT_EQ(t.type, spec.tensors[i].type);
    EXPECT_EQ(t.nbytes, spec.tensors[i].data.size());
    EXPECT_EQ(t.data, built.bytes.data() + built.data_start + built.data_offset[i]);
    EXPECT_EQ(std::memcmp(t.data, spec.tensors[i].data.data(), t.nbytes), 0);
    EXPECT_EQ(g.find_tensor(t.name), &t);
  }
  EXPECT_EQ(g.tensors()[0].shape, (std::vector<int64_t>{5}));
  EXPECT_EQ(g.tensors()[1].shape, (std::vector<int64_t>{3, 64}));
  EXPECT_EQ(g.tensors()[2].shape, (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(g.tensors()[3].shape, (std::vector<int64_t>{2, 1, 2, 32}));
  EXPECT_EQ(g.tensors()[3].rows(), 4);
  EXPECT_EQ(g.tensors()[4].shape, (std::vector<int64_t>{2, 256}));
  EXPECT_EQ(g.find_tensor("absent"), nullptr);
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
}

// Every strict prefix of a valid image is a truncated file: ModelFileError, never a crash.
TEST(Gguf, EveryTruncationThrows) {
  for (const Built& built : {tensors_builder().build(), all_values_builder(2).build()}) {
    for (size_t len = 0; len < built.bytes.size(); ++len) {
      const std::vector<std::byte> prefix(built.bytes.begin(),
                                          built.bytes.begin() + static_cast<long>(len));
      EXPECT_THROW(parse(prefix), ModelFileError) << "prefix of " << len << " bytes parsed";
    }
    EXPECT_NO_THROW(parse(built.bytes));
  }
}

TEST(Gguf, HeaderErrors) {
  Built b = all_values_builder(3).build();
  EXPECT_EQ(problem_of({}), "truncated: magic needs 4 bytes at offset 0, but only 0 remain");
  auto bad = b.bytes;
  bad[0] = std::byte{'X'};
  EXPECT_THAT(problem_of(bad), HasSubstr("not a GGUF file"));
  bad = b.bytes;
  Image w{bad};
  w.patch<uint32_t>(4, 1);
  EXPECT_EQ(problem_of(w.bytes), "GGUF version 1 is not supported (only versions 2 and 3)");
  w.patch<uint32_t>(4, 4);
  EXPECT_EQ(problem_of(w.bytes), "unsupported GGUF version 4 (only versions 2 and 3)");
  w.patch<uint32_t>(4, 0x03000000);
  EXPECT_EQ(problem_of(w.bytes), "big-endian GGUF files are not supported");
}

// Applies one patch to a fresh image and returns the problem text.
template <class T>
std::string corrupt(const Builder& builder, std::function<size_t(const Built&)> where, T value) {
  const Built b = builder.build();
  Image w{b.bytes};
  w.patch<T>(where(b), value);
  return problem_of(w.bytes);
}

TEST(Gguf, CorruptCountsAndLengths) {
  const Builder vals = all_values_builder(3);
  constexpr uint64_t kHuge = uint64_t{1} << 60;
  EXPECT_THAT(corrupt<uint64_t>(
                  vals, [](const Built& b) { return b.n_kv_at; }, kHuge),
              HasSubstr("metadata count 1152921504606846976 cannot fit in the remaining"));
  const Builder tens = tensors_builder();
  EXPECT_THAT(corrupt<uint64_t>(
                  tens, [](const Built& b) { return b.n_tensors_at; }, kHuge),
              HasSubstr("tensor count 1152921504606846976 cannot fit in the remaining"));
  EXPECT_THAT(corrupt<uint64_t>(
                  vals, [](const Built& b) { return b.key_at[0]; }, kHuge),
              HasSubstr("truncated: metadata key #0 (1152921504606846976 bytes) needs"));
  // v.str's value: key length (8) + "v.str" (5) + type (4) -> string length field.
  EXPECT_THAT(corrupt<uint64_t>(
                  vals, [](const Built& b) { return b.key_at[12] + 17; }, kHuge),
              HasSubstr("truncated: metadata key 'v.str' (1152921504606846976 bytes) needs"));
  // v.strings: array element count after the element type.
  EXPECT_THAT(corrupt<uint64_t>(
                  vals, [](const Built& b) { return b.key_at[14] + 8 + 9 + 4 + 4; }, kHuge),
              HasSubstr("metadata key 'v.strings' element count 1152921504606846976 cannot fit"));
  EXPECT_THAT(corrupt<uint64_t>(
                  tens, [](const Built& b) { return b.tensor_at[1].name; }, kHuge),
              HasSubstr("truncated: tensor #1 name (1152921504606846976 bytes)"));
}

TEST(Gguf, CorruptTypes) {
  const Builder vals = all_values_builder(3);
  EXPECT_THAT(corrupt<uint32_t>(
                  vals, [](const Built& b) { return b.key_at[0] + 12; }, 13),
              HasSubstr("metadata key 'v.u8': unknown value type 13"));
  EXPECT_THAT(corrupt<uint32_t>(
                  vals, [](const Built& b) { return b.key_at[14] + 8 + 9 + 4; }, 77),
              HasSubstr("metadata key 'v.strings': unknown array element type 77"));
  EXPECT_THAT(corrupt<uint8_t>(
                  vals, [](const Built& b) { return b.key_at[10] + 8 + 6 + 4; }, 2),
              HasSubstr("metadata key 'v.bool': bool byte 2"));
  const Builder tens = tensors_builder();
  EXPECT_EQ(corrupt<uint32_t>(
                tens, [](const Built& b) { return b.tensor_at[0].type; }, 99),
            "tensor 'norm.weight' has unknown or unsupported ggml type 99");
  EXPECT_EQ(corrupt<uint32_t>(
                tens, [](const Built& b) { return b.tensor_at[0].type; }, 16),
            "tensor 'norm.weight' has unknown or unsupported ggml type 16");  // IQ2_XXS
  // F32 -> Q4_0 on a 5-element row.
  EXPECT_EQ(corrupt<uint32_t>(
                tens, [](const Built& b) { return b.tensor_at[0].type; }, 2),
            "tensor 'norm.weight' row of 5 elements is not a multiple of the Q4_0 block size 32");
}

TEST(Gguf, CorruptDimensions) {
  const Builder tens = tensors_builder();
  EXPECT_EQ(corrupt<uint32_t>(
                tens, [](const Built& b) { return b.tensor_at[1].n_dims; }, 5),
            "tensor 'blk.0.attn_q.weight' has n_dims 5, expected 1 to 4");
  EXPECT_EQ(corrupt<uint32_t>(
                tens, [](const Built& b) { return b.tensor_at[1].n_dims; }, 0),
            "tensor 'blk.0.attn_q.weight' has n_dims 0, expected 1 to 4");
  EXPECT_EQ(corrupt<uint64_t>(
                tens, [](const Built& b) { return b.tensor_at[1].ne0 + 8; }, 0),
            "tensor 'blk.0.attn_q.weight' has ne[1] = 0, expected 1 to 2^63-1");
  EXPECT_THAT(corrupt<uint64_t>(
                  tens, [](const Built& b) { return b.tensor_at[1].ne0; }, uint64_t{1} << 63),
              HasSubstr("has ne[0] = 9223372036854775808"));
  // 4-D Q8_0 tensor: ne = {32, 2, 1, 2}; make ne[1] 2^62 so the element count overflows.
  EXPECT_EQ(
      corrupt<uint64_t>(
          tens, [](const Built& b) { return b.tensor_at[3].ne0 + 8; }, uint64_t{1} << 62),
      "tensor 'token_embd.weight' element count overflows int64 at ne[1] = 4611686018427387904");
  // A row of 2^62 Q8_0 elements is 2^57 blocks of 34 bytes: more bytes than size_t holds.
  // An F32 row of 2^62 elements is 2^64 bytes.
  EXPECT_EQ(corrupt<uint64_t>(
                tens, [](const Built& b) { return b.tensor_at[0].ne0; }, uint64_t{1} << 62),
            "tensor 'norm.weight' row byte size overflows (4611686018427387904 blocks of 4 bytes)");
  // Eight F32 rows of 2^59 elements: 2^62 elements, 2^64 bytes.
  EXPECT_EQ(corrupt<uint64_t>(
                tens, [](const Built& b) { return b.tensor_at[5].ne0; }, uint64_t{1} << 59),
            "tensor 'output.weight' byte size overflows (8 rows of 2305843009213693952 bytes)");
  EXPECT_THAT(
      corrupt<uint64_t>(
          tens, [](const Built& b) { return b.tensor_at[0].ne0; }, uint64_t{1} << 40),
      HasSubstr("tensor 'norm.weight' needs 4398046511104 bytes, more than the whole file (size "));
}

TEST(Gguf, CorruptOffsets) {
  const Builder tens = tensors_builder();
  const Built built = tens.build();
  EXPECT_EQ(corrupt<uint64_t>(
                tens, [](const Built& b) { return b.tensor_at[1].offset; }, 64 + 4),
            "tensor 'blk.0.attn_q.weight' offset 68 is not a multiple of the alignment 64");
  EXPECT_EQ(corrupt<uint64_t>(
                tens, [](const Built& b) { return b.tensor_at[1].offset; }, uint64_t{1} << 40),
            "tensor 'blk.0.attn_q.weight' data offset 1099511627776 (data section at " +
                std::to_string(built.data_start) + ") lies beyond the end of the file (size " +
                std::to_string(built.bytes.size()) + ")");
  // Move the last tensor one alignment step on: its data now ends 64 bytes past the end.
  const uint64_t moved = built.data_offset[5] + 64;
  const uint64_t begin = built.data_start + moved;
  EXPECT_EQ(corrupt<uint64_t>(
                tens, [](const Built& b) { return b.tensor_at[5].offset; }, moved),
            "tensor 'output.weight' data [" + std::to_string(begin) + ", " +
                std::to_string(begin + 128) + ") lies beyond the end of the file (size " +
                std::to_string(built.bytes.size()) + ")");
}

TEST(Gguf, DuplicatesAndAlignment) {
  Builder b;
  b.kvs = {{"a", scalar<uint8_t>(VType::U8, 1)}, {"a", scalar<uint8_t>(VType::U8, 2)}};
  // Header 24 bytes; entry #0 = key length 8 + "a" + type 4 + value 1 = 14 bytes.
  EXPECT_EQ(problem_of(b.build().bytes), "duplicate metadata key 'a' (entry #1 at offset 38)");

  Builder t;
  t.tensors = {{"w", GgmlType::F32, {1}, filled(4, 0)}, {"w", GgmlType::F32, {1}, filled(4, 0)}};
  EXPECT_EQ(problem_of(t.build().bytes), "duplicate tensor 'w' (tensor #1)");

  for (uint32_t bad : {0u, 48u, 1u << 31}) {
    Builder a;
    a.kvs = {{"general.alignment", scalar<uint32_t>(VType::U32, bad)}};
    EXPECT_EQ(problem_of(a.build().bytes),
              "general.alignment " + std::to_string(bad) + " is not a power of two in [1, 2^30]");
  }
  Builder s;
  s.kvs = {{"general.alignment", str("32")}};
  EXPECT_EQ(problem_of(s.build().bytes), "general.alignment is string, expected an integer");

  // Alignment 1 packs tensors back to back; it is valid.
  Builder one;
  one.alignment = 1;
  one.kvs = {{"general.alignment", scalar<uint32_t>(VType::U32, 1)}};
  one.tensors = {{"x", GgmlType::F16, {3}, filled(6, 1)},
                 {"y", GgmlType::Q8_0, {32}, filled(34, 2)}};
  const Built built = one.build();
  const GgufFile g = parse(built.bytes);
  EXPECT_EQ(g.tensors()[1].data, built.bytes.data() + built.bytes.size() - 34);
}

TEST(Gguf, NestingDepthIsBounded) {
  // Arrays of arrays 16 deep (each holding one array; the innermost is empty) parse; 17 do not.
  auto nested = [](int depth) {
    std::function<void(Image&)> body = array_body(VType::U8, 0, [](Image&) {});
    for (int i = 1; i < depth; ++i) body = array_body(VType::ARRAY, 1, body);
    Builder b;
    b.kvs = {{"deep", [body](Image& w) {
                w.put<uint32_t>(static_cast<uint32_t>(VType::ARRAY));
                body(w);
              }}};
    return b.build().bytes;
  };
  EXPECT_EQ(problem_of(nested(16)), "");
  EXPECT_EQ(problem_of(nested(17)),
            "metadata key 'deep'[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: arrays nested "
            "deeper than 16");
}

TEST(Gguf, MetadataArrayElementsAreCappedInAll) {
  // Every element becomes a ~48-byte value whatever its encoded size: 2^23 u8 elements in all parse,
  // one more is refused before anything is allocated for it, in one array or spread over two.
  const auto u8s = [](uint64_t n) { return array(VType::U8, n, [n](Image& w) { w.bytes.resize(w.bytes.size() + n); }); };
  Builder ok;
  ok.kvs = {{"a", u8s((uint64_t{1} << 23) - 1)}, {"b", u8s(1)}};
  EXPECT_EQ(problem_of(ok.build().bytes), "");
  Builder one;
  one.kvs = {{"a", u8s((uint64_t{1} << 23) + 1)}};
  EXPECT_THAT(problem_of(one.build().bytes),
              HasSubstr("metadata key 'a': metadata arrays hold more than 8388608 elements in all"));
  Builder two;
  two.kvs = {{"a", u8s(uint64_t{1} << 22)}, {"b", u8s((uint64_t{1} << 22) + 1)}};
  EXPECT_THAT(problem_of(two.build().bytes), HasSubstr("metadata key 'b': metadata arrays hold more than"));
}

TEST(Gguf, OpenNamesTheFile) {
  try {
    GgufFile::open("/nonexistent/model.gguf");
    FAIL() << "expected ModelFileError";
  } catch (const ModelFileError& e) {
    EXPECT_EQ(e.file(), "/nonexistent/model.gguf");
  }
}

TEST(Gguf, DefaultModel) {
  const std::string path = SPARSESERVE_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << path << " is missing (scripts/fetch-model.sh)";
  const GgufFile g = GgufFile::open(path);
  EXPECT_EQ(g.path(), path);
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_int("llama.block_count"), 30);
  EXPECT_EQ(g.get_int("llama.attention.head_count"), 9);
  EXPECT_EQ(g.get_int("llama.attention.head_count_kv"), 3);
  EXPECT_EQ(g.get_int("llama.context_length"), 8192);
  EXPECT_FLOAT_EQ(static_cast<float>(g.get_float("llama.rope.freq_base")), 100000.0f);
  EXPECT_EQ(g.find("tokenizer.ggml.tokens")->as_array().size(), 49152u);
  EXPECT_EQ(g.metadata().size(), 33u);
  ASSERT_EQ(g.tensors().size(), 272u);

  const TensorView* embd = g.find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, GgmlType::Q8_0);
  EXPECT_EQ(embd->shape, (std::vector<int64_t>{49152, 576}));
  EXPECT_EQ(embd->nbytes, 30081024u);
  const TensorView* q = g.find_tensor("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->type, GgmlType::Q4_1);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{576, 576}));
  const TensorView* k = g.find_tensor("blk.29.attn_k.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->shape, (std::vector<int64_t>{192, 576}));
  const TensorView* down = g.find_tensor("blk.0.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->shape, (std::vector<int64_t>{576, 1536}));
  EXPECT_EQ(down->nbytes, 552960u);
  const TensorView* norm = g.find_tensor("output_norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->type, GgmlType::F32);
  EXPECT_EQ(norm->shape, (std::vector<int64_t>{576}));

  // Views tile the data section in order, each at an aligned offset.
  const std::byte* first = g.tensors().front().data;
  const TensorView& last = g.tensors().back();
  EXPECT_EQ(first, embd->data);
  const auto span = static_cast<size_t>(last.data + last.nbytes - first);
  EXPECT_LE(span, std::filesystem::file_size(path));
  for (const TensorView& t : g.tensors()) EXPECT_EQ((t.data - first) % 32, 0) << t.name;
}

}  // namespace
}  // namespace sparseserve
