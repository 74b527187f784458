// CpuForward invariants on the real default model (skipped when it is absent): a varlen batch equals
// each sequence run alone; chunked prefill equals one-shot prefill; bad input is rejected; a step
// resumed at a layer from the residual stream a LayerTap saw equals the full step bit for bit and
// asks the backend for attention of the later layers only.
#include "engine/cpu_forward.h"

#include <gtest/gtest.h>

#include "tests/engine/default_model_fixture.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "common/errors.h"
#include "engine/dense_kv.h"

namespace sparseserve {
namespace {

using CpuForwardTest = DefaultModelTest;

// Dense attention that records which layers it was asked for.
class CountingBackend final : public KvBackend {
 public:
  explicit CountingBackend(const ModelConfig& c) : dense_(c) { dense_.add_sequence(0); }
  void begin_step(std::span<const ForwardSeq> b) override { dense_.begin_step(b); }
  void end_step(std::span<const ForwardSeq> b) override { dense_.end_step(b); }
  void attend(int64_t layer, std::span<const ForwardSeq> b, const float* qkv, int64_t stride, float* out) override {
    layers.push_back(layer);
    dense_.attend(layer, b, qkv, stride, out);
  }
  std::vector<int64_t> layers;

 private:
  DenseKvBackend dense_;
};

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
  DenseKvBackend kv(model_->config);
  for (uint64_t id : {1, 2, 3, 4}) kv.add_sequence(id);
  const auto na = static_cast<int64_t>(a.size()), nb = static_cast<int64_t>(b.size());
  const ForwardSeq sa{1, 0, a, true, na}, sb{2, 0, b, true, nb};
  fwd.forward(std::span(&sa, 1), kv, la);
  fwd.forward(std::span(&sb, 1), kv, lb);
  const ForwardSeq both[] = {{3, 0, a, true, na}, {4, 0, b, false, nb}};
  fwd.forward(both, kv, lab);
  ASSERT_EQ(lab.size(), (a.size() + 1) * V);
  EXPECT_LT(max_rel(lab.data(), la.data(), na * V), 1e-4);
  EXPECT_LT(max_rel(lab.data() + na * V, lb.data() + (nb - 1) * V, V), 1e-4);
  EXPECT_EQ(kv.length(3), na);
  EXPECT_EQ(kv.length(4), nb);
}

TEST_F(CpuForwardTest, ChunkedPrefillEqualsOneShot) {
  CpuForward fwd(*model_);
  const int64_t V = model_->config.vocab_size;
  const std::vector<int32_t> ids = model_->tokenizer.encode("One two three four five six seven eight nine ten eleven twelve", false);
  const auto n = static_cast<int64_t>(ids.size());
  std::vector<float> one, part, chunked;
  DenseKvBackend kv(model_->config);
  kv.add_sequence(1);
  kv.add_sequence(2);
  const ForwardSeq s{1, 0, ids, true, n};
  fwd.forward(std::span(&s, 1), kv, one);
  for (int64_t off = 0; off < n; off += 5) {
    const ForwardSeq c{2, off, std::span(ids).subspan(static_cast<size_t>(off), static_cast<size_t>(std::min<int64_t>(5, n - off))), true, n};
    fwd.forward(std::span(&c, 1), kv, part);
    chunked.insert(chunked.end(), part.begin(), part.end());
  }
  ASSERT_EQ(chunked.size(), one.size());
  EXPECT_LT(max_rel(chunked.data(), one.data(), n * V), 1e-4);
}

TEST_F(CpuForwardTest, RejectsBadTokenAndOverflowWithoutTouchingTheCache) {
  CpuForward fwd(*model_);
  DenseKvBackend kv(model_->config);
  kv.add_sequence(1);
  std::vector<float> logits;
  const std::vector<int32_t> bad = {1, static_cast<int32_t>(model_->config.vocab_size)};
  ForwardSeq s{1, 0, bad, false, 2};
  EXPECT_THROW(fwd.forward(std::span(&s, 1), kv, logits), InvalidArgument);
  EXPECT_EQ(kv.length(1), 0);
  const std::vector<int32_t> neg = {-1};
  s.tokens = neg;
  EXPECT_THROW(fwd.forward(std::span(&s, 1), kv, logits), InvalidArgument);
  std::vector<int32_t> huge(static_cast<size_t>(model_->config.max_context) + 1, 1);
  s.tokens = huge;
  EXPECT_THROW(fwd.forward(std::span(&s, 1), kv, logits), InvalidArgument);
  EXPECT_EQ(kv.length(1), 0);
}

TEST_F(CpuForwardTest, ResumeFromLayerEqualsFullForward) {
  const ModelConfig& c = model_->config;
  std::string text;
  while (model_->tokenizer.encode(text, false).size() < 300) text += "The committee met on Tuesday to review the budget. ";
  const std::vector<int32_t> ids = model_->tokenizer.encode(text, false);
  const auto n = static_cast<int64_t>(ids.size());
  const ForwardSeq s{0, 0, ids, true, n};
  CpuForward fwd(*model_);
  std::vector<std::vector<float>> stream(static_cast<size_t>(c.n_layers + 1));
  std::vector<float> want, got;
  CountingBackend full(c);
  fwd.forward(std::span(&s, 1), full, want, [&](int64_t l, std::span<const float> x) {
    stream[static_cast<size_t>(l)].assign(x.begin(), x.end());
  });
  ASSERT_EQ(full.layers.size(), static_cast<size_t>(c.n_layers));
  ASSERT_EQ(stream.back().size(), static_cast<size_t>(n * c.hidden));
  for (const int64_t l : {int64_t{1}, int64_t{13}, c.n_layers - 1, c.n_layers}) {
    CountingBackend kv(c);
    fwd.forward_from_layer(l, stream[static_cast<size_t>(l)], std::span(&s, 1), kv, got);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "resumed at layer " << l;
    if (!kv.layers.empty()) {
      EXPECT_EQ(kv.layers.front(), l);
    }
    EXPECT_EQ(static_cast<int64_t>(kv.layers.size()), c.n_layers - l);
  }
  // The final stream through project_logits gives the same rows (up to the matmul's blocking).
  fwd.project_logits(std::span(stream.back()).subspan(static_cast<size_t>((n - 3) * c.hidden)), got);
  ASSERT_EQ(got.size(), static_cast<size_t>(3 * c.vocab_size));
  double err = 0, top = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, std::abs(double(got[i]) - want[static_cast<size_t>((n - 3) * c.vocab_size) + i]));
    top = std::max(top, std::abs(double(got[i])));
  }
  EXPECT_LT(err, 1e-5 * top);

  CountingBackend kv(c);
  EXPECT_THROW(fwd.forward_from_layer(c.n_layers + 1, stream.back(), std::span(&s, 1), kv, got), InvalidArgument);
  EXPECT_THROW(fwd.forward_from_layer(2, std::span(stream[2]).first(10), std::span(&s, 1), kv, got), InvalidArgument);
}

}  // namespace
}  // namespace sparseserve
