// load_format dummy: made-up tensors are repeatable, shaped by the config and scaled as documented;
// a dummy load of the default model keeps its config and tokenizer, replaces every weight, and runs.
#include "engine/dummy_weights.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "common/errors.h"
#include "common/half.h"
#include "engine/cpu_forward.h"
#include "engine/dense_kv.h"
#include "tests/engine/default_model_fixture.h"

namespace sparseserve {
namespace {

std::vector<float> values(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  const auto* bits = reinterpret_cast<const uint16_t*>(t.data);
  for (size_t i = 0; i < out.size(); ++i) out[i] = bf16_to_f32(bits[i]);
  return out;
}

double stddev(const std::vector<float>& v) {
  double s = 0, s2 = 0;
  for (const float x : v) s += x, s2 += double(x) * x;
  const double n = static_cast<double>(v.size()), mean = s / n;
  return std::sqrt(s2 / n - mean * mean);
}

TEST(DummyTensorsTest, RepeatableByNameAndSeedAndScaledAsDocumented) {
  DummyTensors a(7), b(7), other_seed(8);
  const TensorView& w = a.make("w", {96, 256}, DummyFill::kMatrix);
  EXPECT_EQ(w.type, kernels::GgmlType::BF16);
  EXPECT_EQ(w.shape, (std::vector<int64_t>{96, 256}));
  EXPECT_EQ(w.nbytes, size_t{96 * 256 * 2});
  const TensorView& w_again = b.make("w", {96, 256}, DummyFill::kMatrix);
  EXPECT_EQ(std::memcmp(w.data, w_again.data, w.nbytes), 0);
  EXPECT_NE(std::memcmp(w.data, other_seed.make("w", {96, 256}, DummyFill::kMatrix).data, w.nbytes), 0);
  EXPECT_NE(std::memcmp(w.data, a.make("w2", {96, 256}, DummyFill::kMatrix).data, w.nbytes), 0);

  const std::vector<float> m = values(w);
  EXPECT_NEAR(stddev(m), 1.0 / std::sqrt(256.0), 0.05 / std::sqrt(256.0));
  const float bound = std::sqrt(3.0f / 256.0f) * 1.01f;
  for (const float x : m) ASSERT_LE(std::abs(x), bound);
  EXPECT_NEAR(stddev(values(a.make("b", {20000}, DummyFill::kBias))), 0.02, 0.001);
  for (const float x : values(a.make("g", {64}, DummyFill::kGain))) ASSERT_EQ(x, 1.0f);
  EXPECT_THROW(a.make("bad", {4, 0}, DummyFill::kMatrix), InvalidArgument);
}

TEST(DummyTensorsTest, LoadFormatNames) {
  EXPECT_EQ(parse_load_format("auto"), LoadFormat::kAuto);
  EXPECT_EQ(parse_load_format("dummy"), LoadFormat::kDummy);
  EXPECT_THROW(parse_load_format("pt"), InvalidArgument);
}

using DummyLoadTest = DefaultModelTest;

// Bytes of one weight matrix row (its stored form).
std::vector<std::byte> row(const kernels::cpu::WeightMatrix& w, int64_t r) {
  const std::byte* p = w.data + static_cast<size_t>(r) * w.row_stride;
  return {p, p + kernels::row_bytes(w.type, w.cols)};
}

TEST_F(DummyLoadTest, KeepsConfigAndTokenizerAndMakesUpEveryWeight) {
  const auto dummy = load_model(kDefaultModel, "auto", LoadFormat::kDummy);
  const ModelConfig& c = dummy->config;
  EXPECT_EQ(dummy->load_format, LoadFormat::kDummy);
  EXPECT_EQ(c.n_layers, model_->config.n_layers);
  EXPECT_EQ(c.hidden, model_->config.hidden);
  EXPECT_EQ(c.vocab_size, model_->config.vocab_size);
  EXPECT_EQ(dummy->tokenizer.encode("Hello, world", false), model_->tokenizer.encode("Hello, world", false));
  ASSERT_TRUE(dummy->chat_template.has_value());
  EXPECT_EQ(dummy->chat_template->name(), model_->chat_template->name());
  EXPECT_EQ(dummy->tensor_types, (std::map<std::string, int>{{"BF16", 2 + 9 * static_cast<int>(c.n_layers)}}));

  // Every parameter in BF16: the embedding (tied: once), the final norm, each layer's 9 tensors.
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  const int64_t per_layer = 2 * c.hidden + q * c.hidden + 2 * kv * c.hidden + c.hidden * q + 3 * c.intermediate * c.hidden;
  ASSERT_TRUE(c.tied_embeddings);
  EXPECT_EQ(dummy->weights.bytes, static_cast<size_t>(2 * (c.vocab_size * c.hidden + c.hidden + c.n_layers * per_layer)));
  const LayerWeights& l = dummy->weights.layers.back();
  EXPECT_EQ(l.w_down.type, kernels::GgmlType::BF16);
  EXPECT_EQ(l.w_down.rows, c.hidden);
  EXPECT_EQ(l.w_down.cols, c.intermediate);
  for (const float g : l.ffn_norm) ASSERT_EQ(g, 1.0f);
  EXPECT_NE(row(l.wq, 0), row(l.wk, 0));

  // A second load makes the same weights; the forward pass runs on them to finite, varied logits.
  const auto again = load_model(kDefaultModel, "auto", LoadFormat::kDummy);
  EXPECT_EQ(row(again->weights.layers[3].w_gate, 17), row(dummy->weights.layers[3].w_gate, 17));
  CpuForward fwd(*dummy);
  DenseKvBackend cache(c);
  cache.add_sequence(1);
  const std::vector<int32_t> prompt = dummy->tokenizer.encode("The capital of France is", false);
  const ForwardSeq s{1, 0, prompt, false, static_cast<int64_t>(prompt.size())};
  std::vector<float> logits;
  fwd.forward(std::span(&s, 1), cache, logits);
  ASSERT_EQ(logits.size(), static_cast<size_t>(c.vocab_size));
  for (const float x : logits) ASSERT_TRUE(std::isfinite(x));
  EXPECT_GT(stddev(logits), 0.1);
}

TEST(DummyLoadErrorsTest, DirectoryWithoutConfigNamesTheFile) {
  const auto dir = std::filesystem::temp_directory_path() / "sparseserve_dummy_no_config";
  std::filesystem::create_directories(dir);
  try {
    load_model(dir.string(), "auto", LoadFormat::kDummy);
    ADD_FAILURE() << "loaded a folder without config.json";
  } catch (const ModelFileError& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sparseserve
