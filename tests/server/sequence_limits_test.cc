// server/sequence_limits: truncate_prompt, vLLM's truncate_prompt_tokens with the tokenizer's BOS
// kept in front as HF's left truncation keeps it.
#include "server/sequence_limits.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace sparseserve {
namespace {

using ::testing::ElementsAre;

TEST(TruncatePrompt, KeepsTheLastTokens) {
  std::vector<int32_t> p{5, 6, 7, 8, 9};
  truncate_prompt(p, 3, /*bos=*/-1);
  EXPECT_THAT(p, ElementsAre(7, 8, 9));
}

TEST(TruncatePrompt, ShortPromptsAreUnchanged) {
  std::vector<int32_t> p{1, 6, 7};
  truncate_prompt(p, 3, 1);
  EXPECT_THAT(p, ElementsAre(1, 6, 7));
  truncate_prompt(p, 10, 1);
  EXPECT_THAT(p, ElementsAre(1, 6, 7));
}

TEST(TruncatePrompt, AnAddedBosStaysFirstAndCounts) {
  std::vector<int32_t> p{1, 5, 6, 7, 8, 9};
  truncate_prompt(p, 3, 1);
  EXPECT_THAT(p, ElementsAre(1, 8, 9));
  truncate_prompt(p, 1, 1);
  EXPECT_THAT(p, ElementsAre(1));
}

TEST(TruncatePrompt, IdsCutAsGivenAndNoBosIsKeptThatIsNotFirst) {
  std::vector<int32_t> ids{1, 5, 6, 7};
  truncate_prompt(ids, 2, /*bos=*/-1);  // a prompt of ids: its leading 1 is not special here
  EXPECT_THAT(ids, ElementsAre(6, 7));
  std::vector<int32_t> text{4, 1, 6, 7};
  truncate_prompt(text, 2, 1);  // no BOS in front: nothing kept but the tail
  EXPECT_THAT(text, ElementsAre(6, 7));
}

}  // namespace
}  // namespace sparseserve
