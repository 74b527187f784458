// engine/model_profiles: model YAML with sparsity profiles. A good file loads every field; every
// kind of bad file is rejected naming the file and the line at fault; the shipped SmolLM2 file
// loads against the default model's shape (30 layers, 3 KV heads).
#include "engine/model_profiles.h"

#include <gtest/gtest.h>

#include "tests/engine/head_roles_util.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include "common/errors.h"

namespace sparseserve {
namespace {

namespace fs = std::filesystem;
using kvcache::HeadRole;
using kvcache::HeadRoles;

constexpr int32_t kLayers = 4;
constexpr int32_t kKvHeads = 4;

// Gates for a 4 x 4 model. Per layer at ratio 0.5: {0,2} {1,3} {0,1} (all tied) {0,1}.
constexpr const char* kPattern =
    "0.9\t0.1\t0.8\t0.2\n"
    "0.1\t0.9\t0.2\t0.8\n"
    "0.5\t0.5\t0.5\t0.5\n"
    "0.7\t0.6\t0.3\t0.1\n";

constexpr const char* kGoodYaml = R"(# every field
name: tiny
chat_template: chatml
kv_cache: { page_tokens: 32, logical_page_tokens: 8 }
default_profile: balanced
profiles:
  balanced:
    heads: { pattern: p.tsv, retrieval_ratio: 0.5 }
    streaming: { sink_tokens: 32, local_tokens: 128 }
    decode: { token_budget: 256, reselect_interval: 2, dense_layers: [3, 0] }
    prefill:
      dynamic: on
      block_tokens: 128
      stride: 16
      threshold: 0.95
      min_prompt_tokens: 4096
  by-threshold:
    heads:
      pattern: p.tsv
      threshold: 0.6
    streaming: { sink_tokens: 0, local_tokens: 1 }
  by-global:
    heads: { pattern: sub/../p.tsv, global_ratio: 0.25 }
  quest:
    decode: { token_budget: 32, sink_tokens: 0 }
  split-only:
    heads: { pattern: p.tsv, retrieval_ratio: 0.5 }
    decode: { selection: off }
  all-kept:
    heads: { pattern: p.tsv, retrieval_ratio: 1.0 }
    streaming: { sink_tokens: 16, local_tokens: 64 }
)";


class ModelProfilesTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "model_profiles_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    pattern_ = write("p.tsv", kPattern);
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
  // Loading `yaml` must throw ModelFileError naming `file` (default: the YAML) at `line`, with
  // `phrase` in the problem.
  void expect_error(const std::string& yaml, int line, const std::string& phrase,
                    std::string file = "") const {
    SCOPED_TRACE(testing::Message() << "YAML:\n" << yaml);
    const std::string path = write("bad.yaml", yaml);
    if (file.empty()) file = path;
    try {
      ModelProfiles::load(path, kLayers, kKvHeads);
      ADD_FAILURE() << "no error; expected line " << line << ": " << phrase;
    } catch (const ModelFileError& e) {
      EXPECT_EQ(e.file(), file) << e.what();
      EXPECT_EQ(e.problem().rfind("line " + std::to_string(line) + ": ", 0), 0u) << e.what();
      EXPECT_NE(e.problem().find(phrase), std::string::npos) << e.what();
    }
  }
  fs::path dir_;
  std::string pattern_;
};

TEST_F(ModelProfilesTest, GoodYamlLoadsEveryField) {
  const ModelProfiles m = ModelProfiles::load(write("tiny.yaml", kGoodYaml), kLayers, kKvHeads);
  EXPECT_EQ(m.name, "tiny");
  EXPECT_EQ(m.chat_template, "chatml");
  EXPECT_EQ(m.kv_cache.page_tokens, 32);
  EXPECT_EQ(m.kv_cache.logical_page_tokens, 8);
  EXPECT_EQ(m.default_profile, "balanced");
  std::vector<std::string> names;
  for (const auto& [name, p] : m.profiles) {
    names.push_back(name);
    EXPECT_EQ(p.name, name);
    EXPECT_EQ(p.roles.n_layers(), kLayers);
    EXPECT_EQ(p.roles.n_kv_heads(), kKvHeads);
  }
  EXPECT_EQ(names, (std::vector<std::string>{"all-kept", "balanced", "by-global", "by-threshold",
                                             "dense", "quest", "split-only"}));

  const kvcache::SparsityProfile& b = m.get("balanced");
  EXPECT_EQ(retrieval_heads(b.roles), (std::vector<std::string>{"02", "13", "01", "01"}));
  ASSERT_TRUE(b.streaming.has_value());
  EXPECT_EQ(b.streaming->sink_tokens, 32);
  EXPECT_EQ(b.streaming->local_tokens, 128);
  EXPECT_TRUE(b.decode.enabled);
  EXPECT_EQ(b.decode.token_budget, 256);
  EXPECT_EQ(b.decode.reselect_interval, 2);
  EXPECT_EQ(b.decode.dense_layers, (std::vector<int32_t>{0, 3}));
  EXPECT_TRUE(b.prefill.dynamic);
  EXPECT_EQ(b.prefill.block_tokens, 128);
  EXPECT_EQ(b.prefill.stride, 16);
  EXPECT_FLOAT_EQ(b.prefill.threshold, 0.95f);
  EXPECT_EQ(b.prefill.min_prompt_tokens, 4096);
  EXPECT_FALSE(b.is_dense());

  // Threshold: counts differ by layer, returned as they are.
  const kvcache::SparsityProfile& t = m.get("by-threshold");
  EXPECT_EQ(retrieval_heads(t.roles), (std::vector<std::string>{"02", "13", "", "01"}));
  EXPECT_EQ(t.streaming->sink_tokens, 0);
  EXPECT_EQ(t.streaming->local_tokens, 1);
  EXPECT_FALSE(t.decode.enabled);
  EXPECT_FALSE(t.prefill.dynamic);
  // Global ratio: round(0.25 * 16) = 4 over all heads; path relative to the YAML's folder.
  const kvcache::SparsityProfile& g = m.get("by-global");
  EXPECT_EQ(retrieval_heads(g.roles), (std::vector<std::string>{"02", "13", "", ""}));
  ASSERT_TRUE(g.streaming.has_value()) << "default window when streaming is omitted";
  EXPECT_EQ(g.streaming->sink_tokens, 64);
  EXPECT_EQ(g.streaming->local_tokens, 256);
  // Decode selection alone: every head retrieval, defaults for the rest.
  const kvcache::SparsityProfile& q = m.get("quest");
  EXPECT_TRUE(q.roles.all_retrieval());
  EXPECT_FALSE(q.streaming.has_value());
  EXPECT_TRUE(q.decode.enabled);
  EXPECT_EQ(q.decode.token_budget, 32);
  EXPECT_EQ(q.decode.sink_tokens, 0);  // no head streams: only decode can set selection's sink
  EXPECT_EQ(m.get("balanced").decode.sink_tokens, 32);  // the streaming window's, by default
  EXPECT_EQ(q.decode.reselect_interval, 4);
  EXPECT_TRUE(q.decode.dense_layers.empty());
  // `selection: off` keeps the section but disables selection.
  EXPECT_FALSE(m.get("split-only").decode.enabled);
  EXPECT_EQ(m.get("split-only").roles.count(HeadRole::kStreaming), 8);
  // No head streams: the streaming section is validated, then dropped.
  EXPECT_TRUE(m.get("all-kept").roles.all_retrieval());
  EXPECT_FALSE(m.get("all-kept").streaming.has_value());
}

TEST_F(ModelProfilesTest, DenseIsAlwaysPresentAndAllRetrieval) {
  for (const char* yaml : {"name: x\n", "name: x\nprofiles:\n  dense: {}\n",
                           "name: x\nprofiles:\n  dense:\n", "name: x\nprofiles: {}\n"}) {
    SCOPED_TRACE(yaml);
    const ModelProfiles m = ModelProfiles::load(write("d.yaml", yaml), kLayers, kKvHeads);
    const kvcache::SparsityProfile& d = m.get("dense");
    EXPECT_EQ(d.name, "dense");
    EXPECT_TRUE(d.is_dense());
    EXPECT_TRUE(d.roles.all_retrieval());
    EXPECT_EQ(d.roles.n_layers(), kLayers);
    EXPECT_FALSE(d.streaming.has_value());
    EXPECT_EQ(m.default_profile, "dense");
    EXPECT_EQ(m.chat_template, "auto");
    EXPECT_EQ(m.kv_cache.page_tokens, 64);
    EXPECT_EQ(m.kv_cache.logical_page_tokens, 16);
  }
  // An absolute pattern path is used as it is.
  const ModelProfiles m = ModelProfiles::load(
      write("abs.yaml", "name: x\nprofiles:\n  a: {heads: {pattern: " + pattern_ +
                            ", retrieval_ratio: 0.25}}\n"),
      kLayers, kKvHeads);
  EXPECT_EQ(m.get("a").roles.count(HeadRole::kRetrieval), 4);
}

TEST_F(ModelProfilesTest, UnknownProfileNamesTheKnownOnes) {
  const ModelProfiles m = ModelProfiles::load(write("tiny.yaml", kGoodYaml), kLayers, kKvHeads);
  try {
    m.get("fast");
    ADD_FAILURE() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()),
              "unknown sparsity profile 'fast' (known: all-kept, balanced, by-global, "
              "by-threshold, dense, quest, split-only)");
  }
}

TEST_F(ModelProfilesTest, DefaultsWithoutYaml) {
  const ModelProfiles m = ModelProfiles::defaults_for(30, 3);
  EXPECT_EQ(m.profiles.size(), 1u);
  EXPECT_EQ(m.default_profile, "dense");
  EXPECT_EQ(m.chat_template, "auto");
  EXPECT_EQ(m.kv_cache.page_tokens, 64);
  EXPECT_EQ(m.kv_cache.logical_page_tokens, 16);
  EXPECT_TRUE(m.get("dense").is_dense());
  EXPECT_EQ(m.get("dense").roles.n_layers(), 30);
  EXPECT_EQ(m.get("dense").roles.n_kv_heads(), 3);
  EXPECT_THROW(ModelProfiles::defaults_for(0, 3), InvalidArgument);
  EXPECT_THROW(ModelProfiles::load(write("ok.yaml", "name: x\n"), 30, 0), InvalidArgument);
}

TEST_F(ModelProfilesTest, FileLevelErrors) {
  expect_error("", 1, "top level must be a mapping");
  // yaml-cpp stops deep nesting with the message "bad file".
  expect_error("name: x\nprofiles: " + std::string(1000, '[') + std::string(1000, ']') + "\n", 2,
               "not valid YAML: nested too deeply");
  expect_error("- name: x\n", 1, "top level must be a mapping");
  expect_error("chat_template: auto\n", 1, "'name' is missing");
  expect_error("name: x\nprofile: {}\n", 2, "unknown key 'profile' in the model file");
  expect_error("name: x\nname: y\n", 2, "duplicate key 'name'");
  expect_error("name: [x\n", 2, "not valid YAML");
  expect_error("name: x\n---\nname: y\n", 3, "a second YAML document");
  expect_error("name: x\nchat_template: jinja\n", 2,
               "chat_template must be auto, chatml or llama3");
  expect_error("name: [x]\n", 1, "name must be a single value");
  expect_error("name: x\nkv_cache: {page_tokens: 48}\n", 2, "page_tokens");
  expect_error("name: x\nkv_cache:\n  page_tokens: 64\n  page_token: 64\n", 4,
               "unknown key 'page_token' in kv_cache");
  expect_error("name: x\nkv_cache:\n  page_tokens: big\n", 3, "must be an integer, got 'big'");
  expect_error("name: x\ndefault_profile: fast\n", 2,
               "default_profile 'fast' is not a profile (known: dense)");
  expect_error("name: x\nprofiles: [a, b]\n", 2, "profiles must be a mapping");
  expect_error("name: x\nprofiles:\n  \"a b\": {}\n", 3, "profile name 'a b'");
  expect_error("name: x\nprofiles:\n  dense:\n    decode: {token_budget: 128}\n", 4,
               "'dense' is reserved");
  const std::string missing = (dir_ / "absent.yaml").string();
  try {
    ModelProfiles::load(missing, kLayers, kKvHeads);
    ADD_FAILURE() << "no error";
  } catch (const ModelFileError& e) {
    EXPECT_EQ(e.file(), missing);
  }
}

TEST_F(ModelProfilesTest, ProfileErrorsNameTheLine) {
  const std::string head = "name: x\nprofiles:\n  a:\n";  // profile body starts on line 4
  expect_error(head + "    head: {pattern: p.tsv, retrieval_ratio: 0.5}\n", 4,
               "unknown key 'head' in profile 'a'");
  expect_error(head + "    decode:\n      tokn_budget: 128\n", 5, "unknown key 'tokn_budget'");
  expect_error(head + "    decode: {token_budget: abc}\n", 4, "must be an integer, got 'abc'");
  expect_error(head + "    decode: {token_budget: 512.5}\n", 4, "must be an integer");
  expect_error(head + "    decode: {token_budget: 32}\n", 4, "must be ≥ page_tokens (64), got 32");
  expect_error(head + "    decode: {reselect_interval: 0}\n", 4, "reselect_interval must be ≥ 1");
  // The sink pages and the newest page are always kept: a budget below them was accepted and
  // broken at every selection (sink 100: two 64-token sink pages and the newest, 192 tokens).
  expect_error(head + "    heads: {pattern: p.tsv, retrieval_ratio: 0.5}\n"
                      "    streaming: {sink_tokens: 100}\n"
                      "    decode: {token_budget: 128}\n", 6,
               "token_budget (128) must hold the pages always kept: 2 sink page(s) for sink_tokens 100 and the "
               "newest page, 192 tokens");
  expect_error(head + "    decode: {sink_tokens: 2000}\n", 4, "token_budget (1024) must hold the pages always kept");
  expect_error(head + "    decode: {sink_tokens: -1}\n", 4, "sink_tokens must be ≥ 0");
  expect_error(head + "    decode:\n      dense_layers:\n        - 0\n        - 7\n", 7,
               "dense_layers item must be in [0, 3], got 7");
  expect_error(head + "    decode: {dense_layers: 3}\n", 4, "dense_layers must be a list");
  expect_error(head + "    decode: {dense_layers: [1, 1]}\n", 4, "layer 1 twice");
  expect_error(head + "    decode: {selection: maybe}\n", 4, "selection must be on or off");
  expect_error(head + "    heads: {pattern: p.tsv, retrieval_ratio: 0.5}\n"
                      "    streaming: {sink_tokens: -1}\n", 5, "sink_tokens must be ≥ 0, got -1");
  expect_error(head + "    heads: {pattern: p.tsv, retrieval_ratio: 0.5}\n"
                      "    streaming:\n      local_tokens: 0\n", 6, "local_tokens must be ≥ 1");
  expect_error(head + "    streaming: {sink_tokens: 64}\n", 4, "streaming needs a heads section");
  expect_error(head + "    prefill: {dynamic: on, threshold: 0}\n", 4,
               "threshold must be in (0, 1]");
  expect_error(head + "    prefill: {dynamic: on, threshold: 1.5}\n", 4, "(0, 1], got 1.5");
  expect_error(head + "    prefill: {dynamic: on, threshold: 1e-60}\n", 4, "threshold is 0 as a float");
  expect_error(head + "    prefill: {dynamic: on, stride: 0}\n", 4, "stride must be in [1, 64]");
  expect_error(head + "    prefill: {dynamic: on, stride: 24}\n", 4, "stride must divide block_tokens (64), got 24");
  expect_error(head + "    prefill: {dynamic: on, block_tokens: 48}\n", 4,
               "block_tokens must be 16, 32, 64 or 128, got 48");
  expect_error(head + "    prefill: {block_tokens: 64}\n", 4, "'dynamic' (on or off) is missing");
  expect_error(head + "    prefill: {dynamic: sometimes}\n", 4, "dynamic must be on or off");
  expect_error(head + "    heads: {retrieval_ratio: 0.5}\n", 4, "'pattern' is missing");
  expect_error(head + "    heads: {pattern: p.tsv}\n", 4, "needs one of retrieval_ratio");
  expect_error(head + "    heads:\n      pattern: p.tsv\n      threshold: 0.5\n"
                      "      global_ratio: 0.5\n", 7, "got both threshold and global_ratio");
  expect_error(head + "    heads: {pattern: p.tsv, retrieval_ratio: 0}\n", 4,
               "retrieval_ratio must be in (0, 1], got 0");
  expect_error(head + "    heads: {pattern: p.tsv, global_ratio: 1.5}\n", 4,
               "global_ratio must be in");
  expect_error(head + "    heads: {pattern: p.tsv, threshold: .nan}\n", 4, "must be finite");
  expect_error(head + "    heads: {pattern: p.tsv, threshold: 2}\n", 4,
               "threshold must be in (0, 1]");
  expect_error(head + "    heads:\n      pattern: nope.tsv\n      retrieval_ratio: 0.5\n", 5,
               "head pattern file '" + (dir_ / "nope.tsv").string() + "' not found");
  expect_error(head + "    heads: {pattern: ., retrieval_ratio: 0.5}\n", 4, "' is not a regular file");
}

TEST_F(ModelProfilesTest, BadPatternIsReportedInItsOwnFile) {
  const std::string yaml = "name: x\nprofiles:\n  a: {heads: {pattern: q.tsv, threshold: 0.5}}\n";
  const std::string wide = write("q.tsv", "1\t0\t0\t0\t0\n");
  expect_error(yaml, 1, "5 columns, but the model has 4 KV heads", wide);
  write("q.tsv", "1\t0\t0\t0\n1\t0\t0\t0\n");
  expect_error(yaml, 2, "ends after 2 rows, but the model has 4 layers", wide);
  write("q.tsv", "1\t0\t0\t0\n1\t0\t0\t0\n1\t0\tx\t0\n1\t0\t0\t0\n");
  expect_error(yaml, 3, "cell 3 'x' is not a number", wide);
}

TEST(ShippedModelProfiles, SmolLM2LoadsForTheDefaultModel) {
  const std::string path =
      std::string(SPARSESERVE_SOURCE_DIR) + "/configs/models/smollm2-135m-instruct.yaml";
  const ModelProfiles m = ModelProfiles::load(path, 30, 3);
  EXPECT_EQ(m.name, "smollm2-135m-instruct");
  EXPECT_EQ(m.chat_template, "auto");
  EXPECT_EQ(m.kv_cache.page_tokens, 64);
  EXPECT_EQ(m.kv_cache.logical_page_tokens, 16);
  EXPECT_EQ(m.default_profile, "balanced");
  EXPECT_EQ(m.profiles.size(), 7u);
  EXPECT_TRUE(m.get("dense").is_dense());
  for (const char* name : {"balanced", "streaming-only", "select-512", "select-1024"}) {
    SCOPED_TRACE(name);
    const kvcache::SparsityProfile& p = m.get(name);
    // Calibrated gates at global_ratio 0.5: the top 45 of the 90 (layer, KV head) pairs.
    EXPECT_EQ(p.roles.count(HeadRole::kRetrieval), 45);
    EXPECT_EQ(p.roles.count(HeadRole::kStreaming), 45);
    ASSERT_TRUE(p.streaming.has_value());
    EXPECT_EQ(p.streaming->sink_tokens, 64);
    EXPECT_EQ(p.streaming->local_tokens, 256);
    EXPECT_FALSE(p.prefill.dynamic);
  }
  EXPECT_FALSE(m.get("streaming-only").decode.enabled);
  EXPECT_FALSE(m.get("balanced").decode.enabled);  // the head split alone on this model
  EXPECT_EQ(m.get("select-1024").decode.reselect_interval, 4);
  EXPECT_EQ(m.get("select-1024").decode.dense_layers, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(m.get("select-512").decode.token_budget, 512);
  EXPECT_EQ(m.get("select-1024").decode.token_budget, 1024);
  EXPECT_TRUE(m.get("select-512").decode.enabled);
  // Dynamic prefill sparsity, per request: on every head (xattn) and with the head split.
  for (const char* name : {"xattn", "balanced-xattn"}) {
    SCOPED_TRACE(name);
    const kvcache::PrefillSparsity& pf = m.get(name).prefill;
    EXPECT_TRUE(pf.dynamic);
    EXPECT_EQ((std::tuple{pf.block_tokens, pf.stride, pf.threshold, pf.min_prompt_tokens}),
              (std::tuple{64, 8, 0.9f, 1024}));
    EXPECT_FALSE(m.get(name).decode.enabled);
  }
  EXPECT_EQ(m.get("xattn").roles.count(HeadRole::kStreaming), 0);
  EXPECT_EQ(m.get("balanced-xattn").roles.count(HeadRole::kStreaming), 45);
}

}  // namespace
}  // namespace sparseserve
