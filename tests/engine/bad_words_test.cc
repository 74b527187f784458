// vLLM's bad_words (engine/bad_words.h): the banned sequences a word gives with the default model's
// tokenizer, and which last tokens a generated history bans.
#include "engine/bad_words.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/errors.h"
#include "tests/engine/default_model_fixture.h"

namespace sparseserve {
namespace {

class BadWordsTest : public DefaultModelTest {};

TEST_F(BadWordsTest, AWordIsBannedAtTheStartAndAfterASpace) {
  const Tokenizer& tok = model_->tokenizer;
  const auto ids = [&](const std::string& s) { return tok.encode(s, false, false); };
  ASSERT_EQ(ids("Paris").size(), 1u);
  ASSERT_EQ(ids(" Paris").size(), 1u);
  ASSERT_NE(ids("Paris"), ids(" Paris"));
  const std::vector<std::string> words{"  Paris", "Hello world"};
  const auto banned = bad_words_token_ids(tok, words);
  // "Paris" (leading spaces stripped) and " Paris"; "Hello world" and " Hello world" when they have
  // as many tokens and another first one.
  std::vector<std::vector<int32_t>> want{ids("Paris"), ids(" Paris"), ids("Hello world")};
  if (ids(" Hello world").size() == ids("Hello world").size() && ids(" Hello world")[0] != ids("Hello world")[0]) {
    want.push_back(ids(" Hello world"));
  }
  EXPECT_EQ(banned, want);
  const std::vector<std::string> blank{"ok", " \t"};
  EXPECT_THROW(bad_words_token_ids(tok, blank), InvalidArgument);
}

TEST(BadWords, TheLastTokenIsBannedWhereTheRestWasJustGenerated) {
  const std::vector<std::vector<int32_t>> banned{{5}, {7, 8}, {1, 2, 3}};
  const auto banned_after = [&](std::vector<int32_t> generated) {
    std::vector<float> logits(10, 0.0f);
    ban_bad_words(banned, generated, logits);
    std::vector<int32_t> out;
    for (int32_t i = 0; i < 10; ++i) {
      if (std::isinf(logits[static_cast<size_t>(i)])) out.push_back(i);
    }
    return out;
  };
  EXPECT_EQ(banned_after({}), (std::vector<int32_t>{5}));
  EXPECT_EQ(banned_after({7}), (std::vector<int32_t>{5, 8}));
  EXPECT_EQ(banned_after({7, 1}), (std::vector<int32_t>{5}));
  EXPECT_EQ(banned_after({1, 2}), (std::vector<int32_t>{3, 5}));
  EXPECT_EQ(banned_after({2}), (std::vector<int32_t>{5}));
  EXPECT_EQ(banned_after({9, 1, 2}), (std::vector<int32_t>{3, 5}));
}

}  // namespace
}  // namespace sparseserve
