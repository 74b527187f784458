// The prefix cache's sharing rules per sparsity profile (engine/prefix_rules.h): which of a request's
// tokens a later prompt computes alike.
#include "engine/prefix_rules.h"

#include <gtest/gtest.h>

namespace sparseserve {
namespace {

kvcache::SparsityProfile profile(bool dynamic, bool select) {
  kvcache::SparsityProfile p = kvcache::SparsityProfile::dense(2, 2);
  p.prefill.dynamic = dynamic;
  p.prefill.block_tokens = 128;
  p.prefill.min_prompt_tokens = 256;
  p.decode.enabled = select;
  return p;
}

TEST(PrefixRules, ADynamicPromptSharesItsWholeQueryBlocksOnly) {
  for (const bool select : {false, true}) {
    const kvcache::SparsityProfile p = profile(true, select);
    EXPECT_TRUE(p.prefill.runs_on(256));
    // Not the last partial block (its mask changes as rows join it), not the generated tokens.
    EXPECT_EQ(cacheable_tokens(p, 500, 500), 384u);
    EXPECT_EQ(cacheable_tokens(p, 500, 540), 384u);
    EXPECT_EQ(cacheable_tokens(p, 512, 540), 512u);
    EXPECT_EQ(cacheable_tokens(p, 300, 300), 256u);
  }
}

TEST(PrefixRules, APromptUnderMinPromptTokensRunsDenseAndSharesLikeIt) {
  const kvcache::SparsityProfile p = profile(true, false);
  EXPECT_FALSE(p.prefill.runs_on(255));
  EXPECT_EQ(cacheable_tokens(p, 255, 300), 300u);  // the answer too: decoded as a prefill computes it
  EXPECT_EQ(cacheable_tokens(profile(true, true), 255, 300), 255u);
}

TEST(PrefixRules, PageSelectionSharesThePromptAndDenseEverything) {
  EXPECT_FALSE(profile(false, true).prefill.runs_on(5000));
  EXPECT_EQ(cacheable_tokens(profile(false, true), 500, 540), 500u);
  EXPECT_EQ(cacheable_tokens(profile(false, false), 500, 540), 540u);
  EXPECT_EQ(cacheable_tokens(kvcache::SparsityProfile::dense(2, 2), 1, 1), 1u);
}

}  // namespace
}  // namespace sparseserve
