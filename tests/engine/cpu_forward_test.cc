// CpuForward invariants on the real default model (skipped when it is absent): a varlen batch equals
// each sequence run alone; chunked prefill equals one-shot prefill; bad input is rejected.
#include "engine/cpu_forward.h"

#include <gtest/gtest.h>

#include "tests/engine/default_model_fixture.h"

#include <cmath>
#include <filesystem>

#include "common/errors.h"
#include "engine/dense_kv.h"

namespace sparseserve {
namespace {

using CpuForwardTest = DefaultModelTest;

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

}  // namespace
}  // namespace sparseserve
