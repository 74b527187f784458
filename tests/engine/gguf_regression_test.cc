// Replays the fuzzer's inputs through the GGUF reader: every file under tests/fuzz/regressions/
// (inputs that once crashed it) must parse or throw ModelFileError, and every seed under
// tests/fuzz/seeds/ (valid files written by gguf-py, tests/fuzz/make_seeds.py) must parse. A parsed
// file's tensors are read end to end and their first rows dequantized, as the fuzzer does.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "common/errors.h"
#include "engine/gguf.h"
#include "kernels/cpu/ggml_types.h"

namespace sparseserve {
namespace {

namespace fs = std::filesystem;

std::vector<fs::path> files_under(const std::string& dir) {
  std::vector<fs::path> out;
  const fs::path root = fs::path(SPARSESERVE_SOURCE_DIR) / dir;
  if (!fs::is_directory(root)) return out;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (entry.is_regular_file() && entry.path().filename().string().front() != '.')
      out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::byte> read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  const std::vector<char> chars((std::istreambuf_iterator<char>(f)),
                                std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(chars.size());
  for (size_t i = 0; i < chars.size(); ++i) bytes[i] = static_cast<std::byte>(chars[i]);
  return bytes;
}

// Parses and exercises the views; returns false when the reader rejected the file.
bool replay(const std::vector<std::byte>& bytes, const std::string& name) {
  std::optional<GgufFile> g;
  try {
    g.emplace(GgufFile::parse(bytes, name));
  } catch (const ModelFileError& e) {
    EXPECT_EQ(e.file(), name);
    EXPECT_FALSE(e.problem().empty());
    return false;
  }
  const std::byte* begin = bytes.data();
  const std::byte* end = begin + bytes.size();
  for (const TensorView& t : g->tensors()) {
    EXPECT_GE(t.data, begin) << t.name;
    EXPECT_LE(t.data + t.nbytes, end) << t.name;
    EXPECT_EQ(t.nbytes, kernels::row_bytes(t.type, t.cols()) * static_cast<size_t>(t.rows()))
        << t.name;
    if (!kernels::type_traits(t.type).dequantizable) continue;
    std::vector<float> row(static_cast<size_t>(t.cols()));
    kernels::dequantize_row(t.type, t.data, row.data(), t.cols());
  }
  return true;
}

TEST(GgufRegression, CrashInputsParseOrThrowModelFileError) {
  const auto files = files_under("tests/fuzz/regressions");
  EXPECT_FALSE(files.empty()) << "no regression inputs found";
  for (const fs::path& p : files) {
    SCOPED_TRACE(p.string());
    replay(read_all(p), p.filename().string());
  }
}

TEST(GgufRegression, SeedsParse) {
  const auto files = files_under("tests/fuzz/seeds");
  ASSERT_FALSE(files.empty()) << "no seeds found (tests/fuzz/make_seeds.py writes them)";
  for (const fs::path& p : files) {
    SCOPED_TRACE(p.string());
    const auto bytes = read_all(p);
    EXPECT_TRUE(replay(bytes, p.filename().string()));
    // Prefixes of a seed parse (a cut in trailing padding) or throw ModelFileError, nothing else.
    for (size_t len = 0; len < bytes.size(); len += 7) {
      replay(std::vector<std::byte>(bytes.begin(), bytes.begin() + static_cast<long>(len)),
             "prefix");
    }
  }
}

// The seed gguf-py's GGUFWriter wrote with every value type reads back as written.
TEST(GgufRegression, GgufPyWriterValues) {
  const fs::path p = fs::path(SPARSESERVE_SOURCE_DIR) / "tests/fuzz/seeds/all_values.fuzz";
  ASSERT_TRUE(fs::exists(p));
  const auto bytes = read_all(p);
  const GgufFile g = GgufFile::parse(bytes, "all_values.gguf");
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_int("t.u8"), 200);
  EXPECT_EQ(g.get_int("t.i8"), -100);
  EXPECT_EQ(g.get_int("t.u16"), 60000);
  EXPECT_EQ(g.get_int("t.i16"), -30000);
  EXPECT_EQ(g.get_int("t.u32"), 4000000000);
  EXPECT_EQ(g.get_int("t.i32"), -2000000000);
  EXPECT_EQ(std::get<uint64_t>(g.find("t.u64")->value), (uint64_t{1} << 63) + 5);
  EXPECT_EQ(g.get_int("t.i64"), -(int64_t{1} << 62));
  EXPECT_EQ(g.get_float("t.f32"), 1.5);
  EXPECT_EQ(g.get_float("t.f64"), -2.25);
  EXPECT_TRUE(g.find("t.bool")->as_bool());
  EXPECT_EQ(g.get_string("t.str"), "h\xc3\xa9llo");
  const auto& strings = g.find("t.strings")->as_array();
  ASSERT_EQ(strings.size(), 3u);
  EXPECT_EQ(strings[2].as_string(), "<|im_start|>");
  const auto& nested = g.find("t.nested")->as_array();
  ASSERT_EQ(nested.size(), 2u);
  ASSERT_EQ(nested[0].as_array().size(), 2u);
  EXPECT_EQ(nested[0].as_array()[1].as_int(), 2);
  EXPECT_EQ(nested[1].as_array()[0].as_int(), 3);
  const TensorView* t = g.find_tensor("f32");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 4}));
  std::vector<float> row(4);
  kernels::dequantize_row(t->type, t->data + 16, row.data(), 4);
  EXPECT_EQ(row, (std::vector<float>{4, 5, 6, 7}));
}

}  // namespace
}  // namespace sparseserve
