// The paged backend on the real default model (skipped when absent):
//  - the `dense` profile is bit-identical to the dense contiguous backend (prefill chunks and decode);
//  - a sparse profile at a context inside its streaming window equals dense bit for bit (every key
//    is still in the Λ band and selection is inactive below the budget);
//  - KV pages held at context L follow the profile's formula: retrieval lanes × ceil(L / P) plus
//    streaming lanes × min(sink + ring pages, blocks touched).
#include <gtest/gtest.h>

#include "tests/engine/default_model_fixture.h"

#include <cstring>
#include <filesystem>

#include "engine/cpu_forward.h"
#include "engine/dense_kv.h"
#include "engine/model_profiles.h"
#include "engine/paged_kv.h"

namespace sparseserve {
namespace {


class PagedModelTest : public DefaultModelTest {
 protected:
  // Runs prompt in chunks then `decode` greedy steps; returns every logits row produced.
  std::vector<float> run(KvBackend& kv, kvcache::KvCacheManager* mgr, const std::vector<int32_t>& prompt, int64_t chunk,
                         int decode, std::vector<int32_t>* generated = nullptr) const {
    CpuForward fwd(*model_);
    std::vector<float> all, logits;
    const auto n = static_cast<int64_t>(prompt.size());
    for (int64_t off = 0; off < n; off += chunk) {
      const int64_t c = std::min(chunk, n - off);
      if (mgr) mgr->allocate(1, off + c);
      const ForwardSeq s{1, off, std::span(prompt).subspan(static_cast<size_t>(off), static_cast<size_t>(c)), true, n};
      fwd.forward(std::span(&s, 1), kv, logits);
      all.insert(all.end(), logits.begin(), logits.end());
    }
    std::vector<int32_t> toks;
    for (int i = 0; i < decode; ++i) {
      const auto V = model_->config.vocab_size;
      const float* last = all.data() + all.size() - V;
      toks.push_back(static_cast<int32_t>(std::max_element(last, last + V) - last));
      if (mgr) mgr->allocate(1, n + i + 1);
      const ForwardSeq s{1, n + i, std::span(&toks.back(), 1), false, n};
      fwd.forward(std::span(&s, 1), kv, logits);
      all.insert(all.end(), logits.begin(), logits.end());
    }
    if (generated) *generated = toks;
    return all;
  }
  std::vector<int32_t> prompt(int64_t tokens) const {
    std::string text;
    while (static_cast<int64_t>(model_->tokenizer.encode(text, false).size()) < tokens) {
      text += "The committee met on Tuesday to review the budget, and the minutes were filed. ";
    }
    auto ids = model_->tokenizer.encode(text, false);
    ids.resize(static_cast<size_t>(tokens));
    return ids;
  }
};

TEST_F(PagedModelTest, DenseProfileIsBitIdenticalToDenseBackend) {
  const auto ids = prompt(300);
  DenseKvBackend dense(model_->config);
  dense.add_sequence(1);
  const auto want = run(dense, nullptr, ids, 128, 12);

  const ModelProfiles p = profiles();
  kvcache::KvCacheManager mgr(p.kv_cache, 4096);
  mgr.add_sequence(1, kvcache::SequenceLayout::from_roles(p.get("dense").roles, std::nullopt));
  PagedKvBackend paged(model_->config, mgr);
  paged.add_sequence(1, p.get("dense"));
  const auto got = run(paged, &mgr, ids, 128, 12);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
}

TEST_F(PagedModelTest, SparseProfileInsideItsWindowEqualsDense) {
  const ModelProfiles p = profiles();
  const kvcache::SparsityProfile& bal = p.get("select-1024");  // head split and page selection
  ASSERT_TRUE(bal.streaming.has_value());
  ASSERT_TRUE(bal.decode.enabled);
  // Every key stays in the band (len ≤ local) and the budget exceeds the context.
  const int64_t len = std::min<int64_t>(bal.streaming->local_tokens, bal.decode.token_budget) - 8;
  const auto ids = prompt(len);
  DenseKvBackend dense(model_->config);
  dense.add_sequence(1);
  const auto want = run(dense, nullptr, ids, 100, 6);
  kvcache::KvCacheManager mgr(p.kv_cache, 4096);
  mgr.add_sequence(1, kvcache::SequenceLayout::from_roles(bal.roles, bal.streaming));
  PagedKvBackend paged(model_->config, mgr);
  paged.add_sequence(1, bal);
  const auto got = run(paged, &mgr, ids, 100, 6);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
}

TEST_F(PagedModelTest, KvPagesHeldFollowTheProfileFormula) {
  const ModelProfiles p = profiles();
  for (const char* name : {"dense", "balanced"}) {
    const kvcache::SparsityProfile& prof = p.get(name);
    const int64_t P = p.kv_cache.page_tokens;
    const int64_t R = prof.roles.count(kvcache::HeadRole::kRetrieval);
    const int64_t S = prof.roles.count(kvcache::HeadRole::kStreaming);
    for (const int64_t L : {int64_t{1}, int64_t{63}, int64_t{64}, int64_t{700}, int64_t{2048}, int64_t{8000}}) {
      kvcache::KvCacheManager mgr(p.kv_cache, 200000);
      mgr.add_sequence(1, kvcache::SequenceLayout::from_roles(prof.roles, prof.streaming));
      mgr.allocate(1, L);
      const int64_t blocks = (L + P - 1) / P;
      int64_t streaming_pages = 0;
      if (prof.streaming) {
        const int64_t sink = (prof.streaming->sink_tokens + P - 1) / P;
        const int64_t ring = (prof.streaming->local_tokens + P - 1) / P + 1;
        streaming_pages = S * std::min(sink + ring, blocks);
      }
      EXPECT_EQ(mgr.used_pages(kvcache::HeadRole::kRetrieval), R * blocks) << name << " L=" << L;
      EXPECT_EQ(mgr.used_pages(kvcache::HeadRole::kStreaming), streaming_pages) << name << " L=" << L;
    }
  }
}

// Serving numerics: a sequence's logits do not depend on what else is in the step or on how its
// prompt is chunked (the engine's "same seed, same tokens, busy or idle" guarantee).
TEST_F(PagedModelTest, BatchInvariantNumericsGiveIdenticalLogitsAloneOrBatched) {
  using kernels::cpu::Numerics;
  const ModelProfiles p = profiles();
  const kvcache::SparsityProfile& bal = p.get("balanced");
  const auto a = prompt(700), b = prompt(90);
  const auto V = model_->config.vocab_size;
  const auto layout = kvcache::SequenceLayout::from_roles(bal.roles, bal.streaming);
  CpuForward fwd(*model_, Numerics::kBatchInvariant);

  // Alone: one 700-token chunk, then 3 decode steps.
  std::vector<float> alone;
  {
    kvcache::KvCacheManager mgr(p.kv_cache, 8192);
    mgr.add_sequence(1, layout);
    PagedKvBackend kv(model_->config, mgr, Numerics::kBatchInvariant);
    kv.add_sequence(1, bal);
    std::vector<float> logits;
    mgr.allocate(1, 700);
    const ForwardSeq s{1, 0, a, false, 700};
    fwd.forward(std::span(&s, 1), kv, logits);
    alone = logits;
    for (int32_t i = 0; i < 3; ++i) {
      const int32_t tok = 100 + i;
      mgr.allocate(1, 701 + i);
      const ForwardSeq d{1, 700 + i, std::span(&tok, 1), false, 700};
      fwd.forward(std::span(&d, 1), kv, logits);
      alone.insert(alone.end(), logits.begin(), logits.end());
    }
  }
  // Batched: chunks of 250 / 300 / 150 next to another sequence's prefill and decode.
  std::vector<float> batched;
  {
    kvcache::KvCacheManager mgr(p.kv_cache, 8192);
    mgr.add_sequence(1, layout);
    mgr.add_sequence(2, layout);
    PagedKvBackend kv(model_->config, mgr, Numerics::kBatchInvariant);
    kv.add_sequence(1, bal);
    kv.add_sequence(2, bal);
    std::vector<float> logits;
    const int64_t cuts[] = {0, 250, 550, 700};
    int64_t b_len = 0;
    for (int c = 0; c < 3; ++c) {
      mgr.allocate(1, cuts[c + 1]);
      const int64_t bn = c == 0 ? 90 : 1;
      mgr.allocate(2, b_len + bn);
      const int32_t btok = 7;
      const ForwardSeq both[] = {
          {2, b_len, c == 0 ? std::span<const int32_t>(b) : std::span<const int32_t>(&btok, 1), false, 90},
          {1, cuts[c], std::span(a).subspan(static_cast<size_t>(cuts[c]), static_cast<size_t>(cuts[c + 1] - cuts[c])), false, 700,
           c < 2}};
      fwd.forward(both, kv, logits);
      b_len += bn;
    }
    batched.assign(logits.end() - V, logits.end());
    for (int32_t i = 0; i < 3; ++i) {
      const int32_t tok = 100 + i, btok = 9;
      mgr.allocate(1, 701 + i);
      mgr.allocate(2, b_len + 1);
      const ForwardSeq both[] = {{1, 700 + i, std::span(&tok, 1), false, 700}, {2, b_len, std::span(&btok, 1), false, 90}};
      fwd.forward(both, kv, logits);
      batched.insert(batched.end(), logits.begin(), logits.begin() + V);
      ++b_len;
    }
  }
  ASSERT_EQ(alone.size(), batched.size());
  EXPECT_EQ(std::memcmp(alone.data(), batched.data(), alone.size() * sizeof(float)), 0);
}

// Dynamic prefill sparsity masks every prompt chunk, a one-token chunk too: a prompt one token past
// a multiple of block_tokens, split before its last token (by the step budget, a prompt_logprobs cap
// or a recompute), gives the logits it gives in one chunk. (A one-token chunk attended densely.)
TEST_F(PagedModelTest, DynamicPrefillOfAOneTokenChunkIsMaskedAsInAWholePrompt) {
  using kernels::cpu::Numerics;
  const ModelProfiles p = profiles();
  const kvcache::SparsityProfile& xattn = p.get("xattn");
  ASSERT_TRUE(xattn.prefill.dynamic);
  const int64_t n = 16 * int64_t{xattn.prefill.block_tokens} + 1;
  ASSERT_GE(n, xattn.prefill.min_prompt_tokens);
  const auto ids = prompt(n);
  const auto V = model_->config.vocab_size;
  const auto layout = kvcache::SequenceLayout::from_roles(xattn.roles, xattn.streaming);
  CpuForward fwd(*model_, Numerics::kBatchInvariant);
  const auto last_logits = [&](std::span<const int64_t> cuts) {
    kvcache::KvCacheManager mgr(p.kv_cache, 8192);
    mgr.add_sequence(1, layout);
    PagedKvBackend kv(model_->config, mgr, Numerics::kBatchInvariant);
    kv.add_sequence(1, xattn);
    std::vector<float> logits;
    for (size_t c = 0; c + 1 < cuts.size(); ++c) {
      mgr.allocate(1, cuts[c + 1]);
      const ForwardSeq s{1, cuts[c],
                         std::span(ids).subspan(static_cast<size_t>(cuts[c]), static_cast<size_t>(cuts[c + 1] - cuts[c])),
                         false, n};
      fwd.forward(std::span(&s, 1), kv, logits);
    }
    return std::vector<float>(logits.end() - V, logits.end());
  };
  const int64_t whole[] = {0, n}, split[] = {0, n - 1, n};
  const std::vector<float> a = last_logits(whole), b = last_logits(split);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace sparseserve
