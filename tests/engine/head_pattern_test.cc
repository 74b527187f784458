// kvcache/head_pattern: DuoAttention TSV parsing (shapes, bad cells and their line numbers),
// writing and reading back, and the ratio / threshold / global gate -> role rules.
#include "kvcache/head_pattern.h"

#include <gtest/gtest.h>

#include "tests/engine/head_roles_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/errors.h"

namespace sparseserve::kvcache {
namespace {

namespace fs = std::filesystem;

class HeadPatternTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "head_pattern_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
  fs::path dir_;
};

// `fn` must throw ModelFileError for `file` whose problem starts "line N:" and contains `phrase`.
template <typename Fn>
void expect_line_error(Fn fn, const std::string& file, int line, const std::string& phrase) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected line " << line << ": " << phrase;
  } catch (const ModelFileError& e) {
    EXPECT_EQ(e.file(), file) << e.what();
    EXPECT_EQ(e.problem().rfind("line " + std::to_string(line) + ": ", 0), 0u) << e.what();
    EXPECT_NE(e.problem().find(phrase), std::string::npos) << e.what();
  }
}

void expect_parse_error(const std::string& text, int line, const std::string& phrase) {
  SCOPED_TRACE(testing::Message() << "text: " << testing::PrintToString(text));
  expect_line_error([&] { parse_head_pattern(text, "p.tsv"); }, "p.tsv", line, phrase);
}

HeadGates gates_of(int32_t layers, int32_t heads, std::vector<float> values) {
  return HeadGates{layers, heads, std::move(values)};
}


TEST(HeadPatternParse, TabsSpacesTrailingWhitespaceAndNewlines) {
  const HeadGates g = parse_head_pattern("0.5\t1\t0.25  \n  0 0.125\t\t-0.5\t\n\n \t\n", "p.tsv");
  EXPECT_EQ(g.n_layers, 2);
  EXPECT_EQ(g.n_kv_heads, 3);
  EXPECT_EQ(g.values, (std::vector<float>{0.5f, 1.0f, 0.25f, 0.0f, 0.125f, -0.5f}));
  // No final newline, CRLF line ends, scientific notation (numpy.savetxt's default "%.18e").
  const HeadGates h =
      parse_head_pattern("1.000000000000000000e+00\t2.5E-01\r\n+0.75\t3e-50", "p.tsv");
  EXPECT_EQ(h.n_layers, 2);
  EXPECT_EQ(h.values, (std::vector<float>{1.0f, 0.25f, 0.75f, 0.0f}));
}

TEST(HeadPatternParse, RejectsEmptyRaggedBlankAndBadCellsWithLines) {
  expect_parse_error("", 1, "empty");
  expect_parse_error("\n \t\n\n", 1, "empty");
  expect_parse_error("1\t2\n1\t2\n1\n", 3, "ragged row: 1 columns, line 1 has 2");
  expect_parse_error("1\t2\n1\t2\t3\n", 2, "ragged");
  expect_parse_error("1\t2\n\n1\t2\n", 2, "blank line between rows");
  expect_parse_error("\n1\t2\n", 1, "blank line before the first row");
  expect_parse_error("1\t2\n0.5\tabc\n", 2, "cell 2 'abc' is not a number");
  expect_parse_error("1\t2\n0.5\t0.5x\n", 2, "'0.5x' is not a number");
  expect_parse_error("1,2\n", 1, "not a number");
  expect_parse_error("# gates\n1\t2\n", 1, "not a number");
  expect_parse_error("1\t2\n1\tnan\n", 2, "NaN");
  expect_parse_error("1\t2\n1\t2\ninf\t1\n", 3, "infinite");
  expect_parse_error("1\t1e60\n", 1, "out of the float range");
}

TEST_F(HeadPatternTest, ShapeMustMatchTheModel) {
  const std::string path = write("m.tsv", "1\t0\t0\n0\t1\t0\n");
  EXPECT_EQ(read_head_pattern(path, 2, 3).values.size(), 6u);
  expect_line_error([&] { read_head_pattern(path, 2, 4); }, path, 1,
                    "3 columns, but the model has 4 KV heads");
  expect_line_error([&] { read_head_pattern(path, 3, 3); }, path, 2,
                    "ends after 2 rows, but the model has 3 layers");
  expect_line_error([&] { read_head_pattern(path, 1, 3); }, path, 2,
                    "row 2 is beyond the model's 1 layers");
  const std::string ragged = write("r.tsv", "1\t0\t0\n0\t1\n");
  expect_line_error([&] { read_head_pattern(ragged, 2, 3); }, ragged, 2, "ragged");
}

TEST_F(HeadPatternTest, MissingFileNamesIt) {
  const std::string path = (dir_ / "absent.tsv").string();
  try {
    read_head_pattern(path);
    ADD_FAILURE() << "no error";
  } catch (const ModelFileError& e) {
    EXPECT_EQ(e.file(), path);
  }
}

// A pattern laid out as DuoAttention publishes them (Llama-3-8B: 32 layers x 8 KV heads, tabs,
// values like 0.0123) loads cell for cell.
TEST_F(HeadPatternTest, DuoAttentionPublishedStyleLoadsUnchanged) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> digits(0, 9999);
  std::vector<std::string> cells;
  std::string text;
  for (int l = 0; l < 32; ++l) {
    for (int h = 0; h < 8; ++h) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "0.%04d", digits(rng));
      cells.emplace_back(h == l % 8 ? "1.0" : buf);  // one clear retrieval head per layer
      text += (h ? "\t" : "") + cells.back();
    }
    text += "\n";
  }
  const std::string path = write("full_attention_heads.tsv", text);
  const HeadGates g = read_head_pattern(path, 32, 8);
  ASSERT_EQ(g.values.size(), cells.size());
  for (size_t i = 0; i < cells.size(); ++i) {
    EXPECT_EQ(g.values[i], std::strtof(cells[i].c_str(), nullptr)) << cells[i];
  }
}

TEST_F(HeadPatternTest, WriteReadRoundTripIsExactAndPlain) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  HeadGates g{5, 4, {}};
  for (int i = 0; i < 20; ++i) g.values.push_back(u(rng));
  g.values[0] = 1.0f;
  g.values[1] = 0.0f;
  g.values[2] = 1e-7f;
  g.values[3] = 0.0123f;
  const std::string path = (dir_ / "rt.tsv").string();
  write_head_pattern(path, g);
  const HeadGates back = read_head_pattern(path, 5, 4);
  EXPECT_EQ(back.values, g.values);

  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  EXPECT_EQ(text.rfind("1.0\t0.0\t0.0000001\t0.0123\n", 0), 0u) << text;
  EXPECT_EQ(text.find_first_of("eE "), std::string::npos) << "plain decimals, tabs only";
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 5);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\t'), 15);
  for (const auto& e : fs::directory_iterator(dir_)) {  // no temporary file left beside it
    EXPECT_EQ(e.path().filename().string().find("rt.tsv.tmp"), std::string::npos) << e.path();
  }

  g.values[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(write_head_pattern(path, g), InvalidArgument);
  EXPECT_THROW(format_head_pattern(gates_of(2, 2, {1, 2, 3})), InvalidArgument);
}

TEST(HeadRolesFromGates, RetrievalRatioPerLayerWithTies) {
  const HeadGates g = gates_of(3, 4, {0.9f, 0.1f, 0.8f, 0.2f,    // clear order
                                      0.5f, 0.5f, 0.5f, 0.5f,    // all tied: lowest heads
                                      0.1f, 0.7f, 0.7f, 0.9f});  // tie for second place
  EXPECT_EQ(retrieval_heads(roles_by_retrieval_ratio(g, 0.5)),
            (std::vector<std::string>{"02", "01", "13"}));
  // round(0.25 * 4) = 1; tiny ratios still keep one head; ratio 1 keeps all.
  EXPECT_EQ(retrieval_heads(roles_by_retrieval_ratio(g, 0.25)),
            (std::vector<std::string>{"0", "0", "3"}));
  EXPECT_EQ(retrieval_heads(roles_by_retrieval_ratio(g, 0.01)),
            (std::vector<std::string>{"0", "0", "3"}));
  EXPECT_TRUE(roles_by_retrieval_ratio(g, 1.0).all_retrieval());
  // Half of 3 heads rounds up to 2 (the shipped SmolLM2 placeholder relies on it).
  const HeadGates three = gates_of(2, 3, {1.0f, 0.5f, 0.5f, 0.2f, 0.3f, 0.1f});
  EXPECT_EQ(retrieval_heads(roles_by_retrieval_ratio(three, 0.5)),
            (std::vector<std::string>{"01", "01"}));
  const HeadRoles r = roles_by_retrieval_ratio(g, 0.5);
  EXPECT_EQ(r.count(HeadRole::kRetrieval), 6);
  EXPECT_EQ(r.slots(HeadRole::kRetrieval), 6);  // one lane per (layer, head): kvcache/README.md
  EXPECT_EQ(r.slots(HeadRole::kStreaming), 6);
  for (double bad : {0.0, -0.5, 1.5, std::nan("")}) {
    EXPECT_THROW(roles_by_retrieval_ratio(g, bad), InvalidArgument) << bad;
    EXPECT_THROW(roles_by_global_ratio(g, bad), InvalidArgument) << bad;
  }
}

TEST(HeadRolesFromGates, ThresholdKeepsPerLayerCountsAsTheyAre) {
  const HeadGates g = gates_of(3, 3, {0.9f, 0.5f, 0.1f,   //
                                      0.2f, 0.3f, 0.4f,   // none reaches 0.5
                                      0.5f, 0.6f, 0.7f});  // gate == threshold is retrieval
  const HeadRoles r = roles_by_threshold(g, 0.5);
  EXPECT_EQ(retrieval_heads(r), (std::vector<std::string>{"01", "", "012"}));
  EXPECT_EQ(r.slots(HeadRole::kRetrieval), 5);  // one lane per (layer, head): kvcache/README.md
  EXPECT_EQ(r.slots(HeadRole::kStreaming), 4);
  EXPECT_THROW(roles_by_threshold(g, std::nan("")), InvalidArgument);
}

TEST(HeadRolesFromGates, GlobalRatioRanksAllHeadsTogether) {
  const HeadGates g = gates_of(3, 2, {0.9f, 0.8f,    //
                                      0.1f, 0.2f,    //
                                      0.8f, 0.7f});  // 0.8 ties with layer 0: lower layer first
  // round(0.5 * 6) = 3: 0.9 (0,0), then 0.8 (0,1) and 0.8 (2,0).
  EXPECT_EQ(retrieval_heads(roles_by_global_ratio(g, 0.5)),
            (std::vector<std::string>{"01", "", "0"}));
  // round(0.34 * 6) = 2: the tie at 0.8 goes to layer 0.
  EXPECT_EQ(retrieval_heads(roles_by_global_ratio(g, 0.34)),
            (std::vector<std::string>{"01", "", ""}));
  EXPECT_EQ(roles_by_global_ratio(g, 0.01).count(HeadRole::kRetrieval), 1);
  EXPECT_TRUE(roles_by_global_ratio(g, 1.0).all_retrieval());
  // Halves round up though the decimal is a hair under it as a double: 0.35 · 90 = 31.5 → 32 (it
  // gave 31); 0.45 · 10 = 4.5 → 5.
  std::vector<float> many(90);
  for (size_t i = 0; i < many.size(); ++i) many[i] = static_cast<float>(i) / 90.0f;
  EXPECT_EQ(roles_by_global_ratio(gates_of(30, 3, many), 0.35).count(HeadRole::kRetrieval), 32);
  std::vector<float> ten(10, 0.5f);
  EXPECT_EQ(roles_by_global_ratio(gates_of(5, 2, ten), 0.45).count(HeadRole::kRetrieval), 5);
  EXPECT_EQ(roles_by_retrieval_ratio(gates_of(1, 10, ten), 0.45).count(HeadRole::kRetrieval), 5);
}

}  // namespace
}  // namespace sparseserve::kvcache
