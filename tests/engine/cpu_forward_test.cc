// CpuForward invariants on the real default model (skipped when it is absent): a varlen batch equals
// each sequence run alone; chunked prefill equals one-shot prefill; bad input is rejected.
#include "engine/cpu_forward.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "common/errors.h"

namespace sparseserve {
namespace {

const char* kModel = SPARSESERVE_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

class CpuForwardTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::filesystem::exists(kModel)) model_ = load_model(kModel).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "default model not fetched (scripts/fetch-model.sh)";
  }
  static Model* model_;
};
Model* CpuForwardTest::model_ = nullptr;

double max_rel(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num = std::max(num, std::abs(double(a[i]) - b[i]));
    den = std::max(den, std::abs(double(b[i])));
  }
  return num / den;
}

TEST_F(CpuForwardTest, BatchEqualsSequencesAlone) {
  CpuForward fwd(*model_);
  const int64_t V = model_->config.vocab_size;
  const std::vector<int32_t> a = model_->tokenizer.encode("The capital of France is", false);
  const std::vector<int32_t> b = model_->tokenizer.encode("def main():\n    print('hello world')\n    return 0", false);
  std::vector<float> la, lb, lab;
  DenseKvCache ka(model_->config), kb(model_->config), kab1(model_->config), kab2(model_->config);
  ForwardSeq sa{&ka, a, true}, sb{&kb, b, true};
  fwd.forward(std::span(&sa, 1), la);
  fwd.forward(std::span(&sb, 1), lb);
  const ForwardSeq both[] = {{&kab1, a, true}, {&kab2, b, false}};
  fwd.forward(both, lab);
  ASSERT_EQ(lab.size(), (a.size() + 1) * V);
  EXPECT_LT(max_rel(lab.data(), la.data(), a.size() * V), 1e-4);
  EXPECT_LT(max_rel(lab.data() + a.size() * V, lb.data() + (b.size() - 1) * V, V), 1e-4);
  EXPECT_EQ(kab1.length(), static_cast<int64_t>(a.size()));
  EXPECT_EQ(kab2.length(), static_cast<int64_t>(b.size()));
}

TEST_F(CpuForwardTest, ChunkedPrefillEqualsOneShot) {
  CpuForward fwd(*model_);
  const int64_t V = model_->config.vocab_size;
  const std::vector<int32_t> ids = model_->tokenizer.encode("One two three four five six seven eight nine ten eleven twelve", false);
  std::vector<float> one, part, chunked;
  DenseKvCache k1(model_->config), k2(model_->config);
  ForwardSeq s{&k1, ids, true};
  fwd.forward(std::span(&s, 1), one);
  for (size_t off = 0; off < ids.size(); off += 5) {
    ForwardSeq c{&k2, std::span(ids).subspan(off, std::min<size_t>(5, ids.size() - off)), true};
    fwd.forward(std::span(&c, 1), part);
    chunked.insert(chunked.end(), part.begin(), part.end());
  }
  ASSERT_EQ(chunked.size(), one.size());
  EXPECT_LT(max_rel(chunked.data(), one.data(), static_cast<int64_t>(ids.size()) * V), 1e-4);
}

TEST_F(CpuForwardTest, RejectsBadTokenAndOverflowWithoutTouchingTheCache) {
  CpuForward fwd(*model_);
  DenseKvCache kv(model_->config);
  std::vector<float> logits;
  const std::vector<int32_t> bad = {1, static_cast<int32_t>(model_->config.vocab_size)};
  ForwardSeq s{&kv, bad, false};
  EXPECT_THROW(fwd.forward(std::span(&s, 1), logits), InvalidArgument);
  EXPECT_EQ(kv.length(), 0);
  const std::vector<int32_t> neg = {-1};
  s.tokens = neg;
  EXPECT_THROW(fwd.forward(std::span(&s, 1), logits), InvalidArgument);
  std::vector<int32_t> huge(static_cast<size_t>(model_->config.max_context) + 1, 1);
  s.tokens = huge;
  EXPECT_THROW(fwd.forward(std::span(&s, 1), logits), InvalidArgument);
  EXPECT_EQ(kv.length(), 0);
}

}  // namespace
}  // namespace sparseserve
