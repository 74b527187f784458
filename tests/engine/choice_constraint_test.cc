// engine/choice_constraint + text_constraint: vLLM's guided_choice, by hand-written cases, on the default model's
// vocabulary, and through the engine.
#include "engine/choice_constraint.h"
#include "engine/text_constraint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>

#include "common/errors.h"
#include "engine/engine.h"
#include "tests/engine/default_model_fixture.h"

namespace sparseserve {
namespace {

using namespace std::chrono_literals;
using ::testing::AnyOfArray;

TEST(ChoiceText, FollowsThePrefixesOfTheChoices) {
  ChoiceText t(ChoiceText::sorted({"yes", "no", "yesterday", "maybe", "no"}));
  EXPECT_TRUE(t.accepts("y"));
  EXPECT_TRUE(t.accepts("maybe"));
  EXPECT_FALSE(t.accepts("maybes"));
  EXPECT_FALSE(t.accepts("x"));
  EXPECT_FALSE(t.complete());
  EXPECT_TRUE(t.extendable());
  EXPECT_TRUE(t.push("ye"));
  EXPECT_FALSE(t.push("x"));  // unchanged
  EXPECT_TRUE(t.push("s"));
  EXPECT_TRUE(t.complete());
  EXPECT_TRUE(t.extendable());  // "yesterday"
  EXPECT_TRUE(t.accepts("terday"));
  EXPECT_FALSE(t.accepts("terdays"));
  EXPECT_TRUE(t.push("terday"));
  EXPECT_TRUE(t.complete());
  EXPECT_FALSE(t.extendable());
  EXPECT_THROW(ChoiceText::sorted({}), InvalidArgument);
  EXPECT_THROW(ChoiceText::sorted({"a", ""}), InvalidArgument);
}

class ChoiceConstraintTest : public DefaultModelTest {};

TEST_F(ChoiceConstraintTest, KeepsTheContinuingTokensAndStopsOnlyAWholeChoice) {
  const Tokenizer& tok = model_->tokenizer;
  const auto V = static_cast<int32_t>(model_->config.vocab_size);
  const VocabularyBytes vocab(tok, V);
  const int32_t eos = tok.eos_id();
  const std::vector<int32_t> stops{eos};
  ChoiceText t(ChoiceText::sorted({"Paris", "Pa", "London", "Lyon"}));
  std::vector<float> logits(static_cast<size_t>(V), 0.0f);
  constrain_text(t, vocab, stops, /*may_stop=*/true, logits);
  int64_t kept = 0;
  for (int32_t id = 0; id < V; ++id) {
    const std::string_view b = vocab.text(id);
    EXPECT_EQ(std::isfinite(logits[static_cast<size_t>(id)]), !b.empty() && t.accepts(b)) << id;
    kept += std::isfinite(logits[static_cast<size_t>(id)]);
  }
  EXPECT_GT(kept, 3);
  EXPECT_TRUE(std::isfinite(logits[static_cast<size_t>(tok.token_id("Paris"))]));
  EXPECT_FALSE(std::isfinite(logits[static_cast<size_t>(eos)]));
  ASSERT_TRUE(t.push("Pa"));  // whole ("Pa") and extendable ("Paris")
  std::fill(logits.begin(), logits.end(), 1.0f);
  constrain_text(t, vocab, stops, true, logits);
  EXPECT_EQ(logits[static_cast<size_t>(eos)], 1.0f);
  EXPECT_TRUE(std::isfinite(logits[static_cast<size_t>(tok.token_id("ris"))]));
  ASSERT_TRUE(t.push("ris"));  // whole and final: only the stop
  std::fill(logits.begin(), logits.end(), 1.0f);
  constrain_text(t, vocab, stops, true, logits);
  EXPECT_EQ(std::count_if(logits.begin(), logits.end(), [](float l) { return std::isfinite(l); }), 1);
  EXPECT_EQ(logits[static_cast<size_t>(eos)], 1.0f);
}

TEST_F(ChoiceConstraintTest, TheEngineAnswersWithOneOfTheChoices) {
  Engine e(*model_, profiles(), EngineConfig{});
  const Tokenizer& tok = model_->tokenizer;
  const std::vector<std::string> choices{"Paris", "London", "Berlin", "a city in Spain"};
  const auto sorted = ChoiceText::sorted(choices);
  int i = 0;
  for (float temperature : {0.0f, 1.0f, 1.0f, 1.0f}) {
    Request r;
    r.id = "choice-" + std::to_string(i);
    r.prompt = tok.encode("<|im_start|>user\nWhat is the capital of Germany?<|im_end|>\n<|im_start|>assistant\n",
                          false, true);
    r.end_of_turn = tok.token_id("<|im_end|>");
    r.max_tokens = 20;
    r.sampling.temperature = temperature;
    r.sampling.seed = ++i;
    r.choices = sorted;
    const auto [text, last] = drain_stream(*e.submit(r));
    ASSERT_TRUE(last.finished);
    EXPECT_EQ(last.finish_reason, FinishReason::kStop) << text;
    EXPECT_THAT(text, AnyOfArray(choices));
  }
}

}  // namespace
}  // namespace sparseserve
