// SafetensorsSet: synthetic files written into a temp dir (single file, index + shards, glob
// fallback), values of every accepted dtype, and each kind of corruption -> ModelFileError naming
// the file.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/errors.h"
#include "common/half.h"
#include "engine/hf_model.h"

namespace sparseserve {
namespace {

namespace fs = std::filesystem;
using kernels::GgmlType;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "safetensors_test_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// [8-byte LE length][header padded with spaces to a multiple of 8][data], as writers lay it out.
std::string safetensors_blob(std::string header, const std::string& data) {
  while (header.size() % 8 != 0) header.push_back(' ');
  std::string out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + header + data;
}

struct Spec {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;  // little-endian element bytes
};

template <typename T>
std::string raw(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

// A well-formed file holding `specs` back to back, with a __metadata__ entry.
std::string make_file(const std::vector<Spec>& specs) {
  std::string header = R"({"__metadata__":{"format":"pt"})";
  std::string data;
  for (const Spec& s : specs) {
    std::string shape;
    for (int64_t d : s.shape) {
      if (!shape.empty()) shape.push_back(',');
      shape.append(std::to_string(d));
    }
    header += ",\"" + s.name + "\":{\"dtype\":\"" + s.dtype + "\",\"shape\":[" + shape +
              "],\"data_offsets\":[" + std::to_string(data.size()) + "," +
              std::to_string(data.size() + s.bytes.size()) + "]}";
    data += s.bytes;
  }
  return safetensors_blob(header + "}", data);
}

const std::vector<float> kF32 = {-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f};
const std::vector<float> kF16 = {1.5f, -2.25f, 65504.0f, 6.103515625e-05f};  // exact in binary16
const std::vector<float> kBF16 = {1.0f, -3.5f, 256.0f, 0.15625f};            // exact in bfloat16

std::string f16_bytes(const std::vector<float>& v) {
  std::vector<uint16_t> h;
  for (float x : v) h.push_back(f32_to_fp16(x));
  return raw(h);
}
std::string bf16_bytes(const std::vector<float>& v) {
  std::vector<uint16_t> h;
  for (float x : v) h.push_back(f32_to_bf16(x));
  return raw(h);
}

// Decodes a tensor's elements to float (data may be unaligned, so through memcpy).
std::vector<float> values(const TensorView& t) {
  std::vector<float> out;
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (t.type == GgmlType::F32) {
      float x;
      std::memcpy(&x, t.data + 4 * i, 4);
      out.push_back(x);
    } else {
      uint16_t h;
      std::memcpy(&h, t.data + 2 * i, 2);
      out.push_back(t.type == GgmlType::F16 ? fp16_to_f32(h) : bf16_to_f32(h));
    }
  }
  return out;
}

std::vector<Spec> three_dtypes() {
  return {{"w.f32", "F32", {2, 3}, raw(kF32)},
          {"w.f16", "F16", {4}, f16_bytes(kF16)},
          {"w.bf16", "BF16", {2, 2}, bf16_bytes(kBF16)}};
}

void expect_three_dtypes(const SafetensorsSet& set) {
  EXPECT_EQ(set.names(), (std::vector<std::string>{"w.bf16", "w.f16", "w.f32"}));
  EXPECT_EQ(set.find("__metadata__"), nullptr);
  EXPECT_EQ(set.find("absent"), nullptr);

  const TensorView* f32 = set.find("w.f32");
  ASSERT_NE(f32, nullptr);
  EXPECT_EQ(f32->name, "w.f32");
  EXPECT_EQ(f32->type, GgmlType::F32);
  EXPECT_EQ(f32->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f32->nbytes, 24u);
  EXPECT_EQ(f32->rows(), 2);
  EXPECT_EQ(f32->cols(), 3);
  EXPECT_EQ(values(*f32), kF32);

  const TensorView* f16 = set.find("w.f16");
  ASSERT_NE(f16, nullptr);
  EXPECT_EQ(f16->type, GgmlType::F16);
  EXPECT_EQ(f16->shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(f16->nbytes, 8u);
  EXPECT_EQ(values(*f16), kF16);

  const TensorView* bf16 = set.find("w.bf16");
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->type, GgmlType::BF16);
  EXPECT_EQ(bf16->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(bf16->nbytes, 8u);
  EXPECT_EQ(values(*bf16), kBF16);
}

TEST(Safetensors, SingleFileInDirectory) {
  TempDir dir;
  write_bytes(dir.file("model.safetensors"), make_file(three_dtypes()));
  expect_three_dtypes(SafetensorsSet::open_dir(dir.str()));
  expect_three_dtypes(SafetensorsSet::open_file(dir.file("model.safetensors")));
}

TEST(Safetensors, IndexWithTwoShards) {
  TempDir dir;
  const auto specs = three_dtypes();
  write_bytes(dir.file("model-00001-of-00002.safetensors"), make_file({specs[0], specs[1]}));
  write_bytes(dir.file("model-00002-of-00002.safetensors"), make_file({specs[2]}));
  // Not named by the index: must be ignored.
  write_bytes(dir.file("stray.safetensors"), make_file({{"stray", "F32", {1}, raw(kF32).substr(0, 4)}}));
  write_bytes(dir.file("model.safetensors.index.json"),
              R"({"metadata":{"total_size":40},"weight_map":{
                   "w.f32":"model-00001-of-00002.safetensors",
                   "w.f16":"model-00001-of-00002.safetensors",
                   "w.bf16":"model-00002-of-00002.safetensors"}})");
  expect_three_dtypes(SafetensorsSet::open_dir(dir.str()));
}

TEST(Safetensors, AnySafetensorsFilesWithoutIndex) {
  TempDir dir;
  const auto specs = three_dtypes();
  write_bytes(dir.file("a.safetensors"), make_file({specs[2], specs[0]}));
  write_bytes(dir.file("b.safetensors"), make_file({specs[1]}));
  write_bytes(dir.file("notes.txt"), "not a tensor file");
  expect_three_dtypes(SafetensorsSet::open_dir(dir.str()));
}

TEST(Safetensors, EmptyTensorAndEmptyFile) {
  TempDir dir;
  write_bytes(dir.file("x.safetensors"), make_file({{"empty", "F32", {0, 4}, ""}}));
  const auto set = SafetensorsSet::open_file(dir.file("x.safetensors"));
  ASSERT_NE(set.find("empty"), nullptr);
  EXPECT_EQ(set.find("empty")->nbytes, 0u);
  write_bytes(dir.file("y.safetensors"), safetensors_blob("{}", ""));
  EXPECT_TRUE(SafetensorsSet::open_file(dir.file("y.safetensors")).names().empty());
}

// Expects open() to throw ModelFileError whose file() is `file` and whose message holds `phrase`.
template <typename Open>
void expect_error(Open open, const std::string& file, const std::string& phrase) {
  try {
    open();
    ADD_FAILURE() << "no error; expected '" << phrase << "' for " << file;
  } catch (const ModelFileError& e) {
    EXPECT_EQ(e.file(), file);
    EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
    EXPECT_NE(e.problem().find(phrase), std::string::npos) << e.what();
  }
}

struct Corruption {
  const char* label;
  std::string bytes;   // whole file
  const char* phrase;  // expected in the problem text
};

std::string one_tensor(const std::string& entry, size_t data_bytes) {
  return safetensors_blob("{\"t\":" + entry + "}", std::string(data_bytes, '\x01'));
}

std::vector<Corruption> corruptions() {
  const std::string ok = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::string huge_len = one_tensor(ok, 8);
  huge_len[5] = '\x01';  // length byte 5: ~1 TiB
  std::string past_len = one_tensor(ok, 8);
  past_len[0] = static_cast<char>(past_len.size() - 8 + 1);  // one byte more than the file holds
  return {
      {"TooShort", "\x08\x00\x00", "too short"},
      {"HeaderLongerThanFile", huge_len, "exceeds the file size"},
      {"HeaderOneBytePastFile", past_len, "exceeds the file size"},
      {"InvalidJson", safetensors_blob("{\"t\":", ""), "not valid JSON"},
      {"HeaderNotObject", safetensors_blob("[1,2]", ""), "not a JSON object"},
      {"EntryNotObject", one_tensor("3", 0), "not an object"},
      {"UnsupportedDtype",
       one_tensor(R"({"dtype":"I64","shape":[1],"data_offsets":[0,8]})", 8), "dtype I64"},
      {"MissingDtype", one_tensor(R"({"shape":[2],"data_offsets":[0,8]})", 8), "dtype"},
      {"NegativeDim", one_tensor(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", 8),
       "shape"},
      {"ShapeOverflow",
       one_tensor(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})", 8),
       "overflows"},
      {"OffsetsPastEnd", one_tensor(ok, 4), "past the end"},
      {"OffsetsMalformed", one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})", 8),
       "data_offsets"},
      {"BeginAfterEnd", one_tensor(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})", 8),
       "begin after end"},
      {"SizeMismatchesShape",
       one_tensor(R"({"dtype":"F16","shape":[2],"data_offsets":[0,8]})", 8), "needs 4"},
      {"Overlap",
       safetensors_blob(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                            "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                        std::string(12, '\0')),
       "overlap"},
      {"DuplicateName",
       safetensors_blob(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                            "a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                        std::string(8, '\0')),
       "declared twice"},
  };
}

class SafetensorsCorruption : public testing::TestWithParam<Corruption> {};

TEST_P(SafetensorsCorruption, RejectedNamingTheFile) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  write_bytes(path, GetParam().bytes);
  expect_error([&] { SafetensorsSet::open_file(path); }, path, GetParam().phrase);
  expect_error([&] { SafetensorsSet::open_dir(dir.str()); }, path, GetParam().phrase);
}

INSTANTIATE_TEST_SUITE_P(All, SafetensorsCorruption, testing::ValuesIn(corruptions()),
                         [](const auto& info) { return std::string(info.param.label); });

TEST(SafetensorsDir, MissingShard) {
  TempDir dir;
  write_bytes(dir.file("s1.safetensors"), make_file({three_dtypes()[0]}));
  const std::string index = dir.file("model.safetensors.index.json");
  write_bytes(index, R"({"weight_map":{"w.f32":"s1.safetensors","w.f16":"s2.safetensors"}})");
  expect_error([&] { SafetensorsSet::open_dir(dir.str()); }, index, "shard 's2.safetensors'");
}

TEST(SafetensorsDir, IndexNamesTensorItsShardLacks) {
  TempDir dir;
  write_bytes(dir.file("s1.safetensors"), make_file({three_dtypes()[0]}));
  const std::string index = dir.file("model.safetensors.index.json");
  write_bytes(index, R"({"weight_map":{"w.f32":"s1.safetensors","w.f16":"s1.safetensors"}})");
  expect_error([&] { SafetensorsSet::open_dir(dir.str()); }, index, "'w.f16'");
}

TEST(SafetensorsDir, IndexWithoutWeightMapOrEscapingShard) {
  TempDir dir;
  const std::string index = dir.file("model.safetensors.index.json");
  write_bytes(index, R"({"metadata":{}})");
  expect_error([&] { SafetensorsSet::open_dir(dir.str()); }, index, "weight_map");
  write_bytes(index, R"({"weight_map":{"w":"../elsewhere.safetensors"}})");
  expect_error([&] { SafetensorsSet::open_dir(dir.str()); }, index, "invalid shard name");
  write_bytes(index, R"({"weight_map":)");
  expect_error([&] { SafetensorsSet::open_dir(dir.str()); }, index, "not valid JSON");
}

TEST(SafetensorsDir, TensorInTwoShards) {
  TempDir dir;
  write_bytes(dir.file("a.safetensors"), make_file({three_dtypes()[0]}));
  write_bytes(dir.file("b.safetensors"), make_file({three_dtypes()[0]}));
  expect_error([&] { SafetensorsSet::open_dir(dir.str()); }, dir.file("b.safetensors"),
               "also appears in shard 'a.safetensors'");
}

TEST(SafetensorsDir, NoWeightsOrNoDirectory) {
  TempDir dir;
  expect_error([&] { SafetensorsSet::open_dir(dir.str()); }, dir.str(), "no model.safetensors");
  const std::string missing = dir.file("nope");
  expect_error([&] { SafetensorsSet::open_dir(missing); }, missing, "not a directory");
  expect_error([&] { SafetensorsSet::open_file(missing); }, missing, "cannot open");
}

}  // namespace
}  // namespace sparseserve
