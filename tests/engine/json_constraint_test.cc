// engine/json_constraint: the per-step JSON mask on the default model's vocabulary, and JSON mode
// through the engine (the outputs checked by nlohmann::json, an independent parser).
#include "engine/json_constraint.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <thread>

#include "engine/engine.h"
#include "tests/engine/default_model_fixture.h"

namespace sparseserve {
namespace {

using namespace std::chrono_literals;

class JsonConstraintTest : public DefaultModelTest {
 protected:
  void SetUp() override {
    DefaultModelTest::SetUp();
    if (model_ != nullptr && !vocab_) vocab_ = std::make_unique<VocabularyBytes>(model_->tokenizer, vocab_size());
  }
  static int32_t vocab_size() { return static_cast<int32_t>(model_->config.vocab_size); }
  static std::vector<float> zeros() { return std::vector<float>(static_cast<size_t>(vocab_size()), 0.0f); }
  static inline std::unique_ptr<VocabularyBytes> vocab_;
};

TEST_F(JsonConstraintTest, TheVocabularyHoldsEachTextTokensBytes) {
  const Tokenizer& tok = model_->tokenizer;
  ASSERT_EQ(vocab_->size(), vocab_size());
  int32_t specials = 0;
  for (int32_t id = 0; id < vocab_size(); ++id) {
    if (tok.is_special(id)) {
      EXPECT_TRUE(vocab_->text(id).empty()) << id;
      ++specials;
    } else {
      ASSERT_EQ(vocab_->text(id), tok.decode(std::span<const int32_t>(&id, 1))) << id;
    }
  }
  EXPECT_GT(specials, 0);
}

TEST_F(JsonConstraintTest, KeepsExactlyTheTokensThatContinueTheText) {
  const Tokenizer& tok = model_->tokenizer;
  const int32_t eos = tok.eos_id();
  ASSERT_GE(eos, 0);
  JsonPrefix text;
  ASSERT_TRUE(text.push(R"({"name": "Al)"));
  std::vector<float> logits = zeros();
  logits[7] = -INFINITY;  // already excluded: stays so, whatever its bytes
  const auto t0 = std::chrono::steady_clock::now();
  constrain_json(text, *vocab_, std::vector<int32_t>{eos}, /*may_stop=*/true, logits);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  RecordProperty("constrain_ms", std::to_string(ms));
  int64_t kept = 0;
  for (int32_t id = 0; id < vocab_size(); ++id) {
    JsonPrefix next = text;
    const std::string_view bytes = vocab_->text(id);
    const bool continues = !bytes.empty() && next.push(bytes) && id != 7;
    EXPECT_EQ(std::isfinite(logits[static_cast<size_t>(id)]), continues) << id << " '" << bytes << "'";
    kept += continues;
  }
  EXPECT_GT(kept, 1000);  // inside a string most text tokens fit
  EXPECT_EQ(logits[static_cast<size_t>(eos)], -INFINITY);
  const int32_t comma = tok.token_id(",");
  ASSERT_GE(comma, 0);
  EXPECT_TRUE(std::isfinite(logits[static_cast<size_t>(comma)]));  // "," inside a string

  // After a value inside an object: a comma or the close, not another value.
  JsonPrefix after_value;
  ASSERT_TRUE(after_value.push(R"({"a": 1)"));
  logits = zeros();
  const auto t1 = std::chrono::steady_clock::now();
  constrain_json(after_value, *vocab_, std::vector<int32_t>{eos}, true, logits);
  RecordProperty("constrain_after_value_ms",
                 std::to_string(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count()));
  EXPECT_TRUE(std::isfinite(logits[static_cast<size_t>(comma)]));
  EXPECT_TRUE(std::isfinite(logits[static_cast<size_t>(tok.token_id("}"))]));
  EXPECT_TRUE(std::isfinite(logits[static_cast<size_t>(tok.token_id("0"))]));  // 10, 100, ...
  EXPECT_FALSE(std::isfinite(logits[static_cast<size_t>(tok.token_id("\""))]));
  EXPECT_FALSE(std::isfinite(logits[static_cast<size_t>(tok.token_id("]"))]));
}

// A union whose alternatives begin alike (two objects, a number and an enum that overlap): the mask
// keeps exactly the ids that some alternative, compiled and followed on its own, takes.
TEST_F(JsonConstraintTest, AUnionsMaskIsTheUnionOfItsAlternativesMasks) {
  const std::vector<std::string> alts = {
      R"({"type": "object", "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer"}}, "required": ["kind"]})",
      R"({"type": "object", "properties": {"kind": {"const": "dog"}, "name": {"type": "string"}}, "required": ["kind", "name"]})",
      R"({"type": "integer", "minimum": 10, "maximum": 99})",
      R"({"enum": [1, 7.5, "x"]})"};
  std::string all = R"({"anyOf": [)";
  for (size_t i = 0; i < alts.size(); ++i) all += (i ? ", " : "") + alts[i];
  const JsonSchema union_schema = JsonSchema::compile(all + "]}");
  std::vector<JsonSchema> each;
  for (const std::string& a : alts) each.push_back(JsonSchema::compile(a));
  const int32_t eos = model_->tokenizer.eos_id();
  const std::vector<std::string> prefixes = {"", "{", R"({"kind": ")", R"({"kind": "cat", )", "1", "7"};
  for (size_t k = 0; k < prefixes.size(); ++k) {
    const std::string& prefix = prefixes[k];
    JsonText text(JsonPrefix{union_schema});
    ASSERT_TRUE(text.push(prefix)) << prefix;
    std::vector<JsonPrefix> refs;  // the alternatives that take the prefix, each alone
    for (const JsonSchema& s : each) {
      JsonPrefix p(s);
      if (p.push(prefix)) refs.push_back(p);
    }
    std::vector<float> logits = zeros();
    const auto t0 = std::chrono::steady_clock::now();
    constrain_json(text, *vocab_, std::vector<int32_t>{eos}, /*may_stop=*/true, logits);
    RecordProperty("union_constrain_ms_" + std::to_string(k),
                   std::to_string(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()));
    int64_t kept = 0;
    for (int32_t id = 0; id < vocab_size(); ++id) {
      if (id == eos) continue;  // the stop: kept where the text is whole (another test's subject)
      const std::string_view bytes = vocab_->text(id);
      bool want = false;
      for (const JsonPrefix& r : refs) want = want || (!bytes.empty() && JsonPrefix(r).push(bytes));
      ASSERT_EQ(std::isfinite(logits[static_cast<size_t>(id)]), want) << "after '" << prefix << "': " << id << " '" << bytes << "'";
      kept += want;
    }
    EXPECT_GT(kept, 0) << prefix;
  }
}

TEST_F(JsonConstraintTest, StopsEndOnlyAWholeObjectAndMinTokensKeepsWhitespaceOpen) {
  const Tokenizer& tok = model_->tokenizer;
  const int32_t eos = tok.eos_id(), space = tok.token_id("Ġ");
  ASSERT_GE(space, 0);
  const std::vector<int32_t> stops{eos};
  JsonPrefix done(true, /*max_whitespace_run=*/1);
  ASSERT_TRUE(done.push("{} "));  // complete, its whitespace run used up
  std::vector<float> logits = zeros();
  logits[static_cast<size_t>(eos)] = 2.5f;
  constrain_json(done, *vocab_, stops, /*may_stop=*/true, logits);
  EXPECT_EQ(logits[static_cast<size_t>(eos)], 2.5f);  // its own logit back
  int64_t finite = 0;
  for (float l : logits) finite += std::isfinite(l);
  EXPECT_EQ(finite, 1) << "only the stop may follow";

  logits = zeros();
  constrain_json(done, *vocab_, stops, /*may_stop=*/false, logits);
  EXPECT_EQ(logits[static_cast<size_t>(eos)], -INFINITY);
  EXPECT_TRUE(std::isfinite(logits[static_cast<size_t>(space)]));  // whitespace past the run limit
  EXPECT_FALSE(std::isfinite(logits[static_cast<size_t>(tok.token_id("{"))]));
  JsonText kept(done);
  EXPECT_TRUE(advance_json(kept, " "));
  EXPECT_TRUE(kept.complete());
  EXPECT_FALSE(advance_json(kept, "x"));
  EXPECT_TRUE(kept.complete());
}

TEST_F(JsonConstraintTest, AWholeTextWhoseStopsAreGoneKeepsWhitespace) {
  // allowed_token_ids or bad_words may have removed every stop: the row keeps whitespace rather
  // than lose every id.
  const Tokenizer& tok = model_->tokenizer;
  const int32_t eos = tok.eos_id(), space = tok.token_id("Ġ");
  JsonPrefix done(true, 1);
  ASSERT_TRUE(done.push("{} "));
  std::vector<float> logits = zeros();
  logits[static_cast<size_t>(eos)] = -INFINITY;
  constrain_json(done, *vocab_, std::vector<int32_t>{eos}, /*may_stop=*/true, logits);
  EXPECT_TRUE(std::isfinite(logits[static_cast<size_t>(space)]));
  EXPECT_FALSE(std::isfinite(logits[static_cast<size_t>(tok.token_id("{"))]));
}

class JsonModeEngineTest : public DefaultModelTest {};

TEST_F(JsonModeEngineTest, AStopIdThatIsTextDoesNotEndAnUnfinishedObject) {
  // "}" as a stop id, and a bias that makes "{" then "}" the greedy picks: the first "}" closes
  // the object as text; only then may the stop id end it.
  Engine e(*model_, profiles(), EngineConfig{});
  const Tokenizer& tok = model_->tokenizer;
  const int32_t open = tok.token_id("{"), close = tok.token_id("}");
  ASSERT_GE(open, 0);
  ASSERT_GE(close, 0);
  Request r;
  r.id = "json-stop";
  r.prompt = tok.encode("Write JSON:", false, false);
  r.max_tokens = 8;
  r.sampling.temperature = 0;
  r.sampling.logit_bias = {{open, 100.0f}, {close, 50.0f}};
  std::sort(r.sampling.logit_bias.begin(), r.sampling.logit_bias.end());
  r.stop_token_ids = {close};
  r.json_object = true;
  const auto [text, last] = drain_stream(*e.submit(r));
  EXPECT_EQ(text, "{}");
  EXPECT_EQ(last.finish_reason, FinishReason::kStop);
  EXPECT_EQ(last.stop_token, close);
}

TEST_F(JsonModeEngineTest, GreedyAndSampledOutputsAreJsonObjects) {
  Engine e(*model_, profiles(), EngineConfig{});
  const Tokenizer& tok = model_->tokenizer;
  const char* asks[] = {"Describe a cat as JSON with its name and age.", "List three colours.",
                        "Write a JSON object for a book: title, author, year, tags."};
  int64_t whole = 0;
  int i = 0;
  for (const char* ask : asks) {
    for (float temperature : {0.0f, 1.0f}) {
      Request r;
      r.id = "json-" + std::to_string(i++);
      r.prompt = tok.encode(std::string("<|im_start|>user\n") + ask + "<|im_end|>\n<|im_start|>assistant\n", false, true);
      r.end_of_turn = tok.token_id("<|im_end|>");
      r.max_tokens = 160;
      r.sampling.temperature = temperature;
      r.sampling.seed = 7;
      r.json_object = true;
      const auto [text, last] = drain_stream(*e.submit(r));
      ASSERT_TRUE(last.finished) << ask;
      JsonPrefix check;
      EXPECT_TRUE(check.push(text)) << "not a JSON prefix: " << text;
      if (last.finish_reason == FinishReason::kStop) {
        const auto parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
        EXPECT_TRUE(parsed.is_object()) << text;
        ++whole;
      } else {
        EXPECT_EQ(last.finish_reason, FinishReason::kLength) << text;
        EXPECT_EQ(last.completion_tokens, r.max_tokens);
      }
    }
  }
  EXPECT_GE(whole, 3) << "most answers should close their object within 160 tokens";
}

}  // namespace
}  // namespace sparseserve
