// engine/regex_parse + regex_dfa: vLLM's guided_regex. Hand-written cases and refusals here (the
// comparison with Python's re over random patterns is tests/python/test_regex.py), the mask on the
// default model's vocabulary, and the engine's answers.
#include "engine/regex_dfa.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <random>

#include "common/errors.h"
#include "engine/choice_constraint.h"
#include "engine/engine.h"
#include "engine/regex_parse.h"
#include "engine/text_constraint.h"
#include "tests/engine/default_model_fixture.h"

namespace sparseserve {
namespace {

using ::testing::HasSubstr;

bool prefix(const RegexDfa& d, std::string_view s) { return d.walk(RegexDfa::start(), s) != RegexDfa::kDead; }

TEST(RegexDfa, MatchesWholeTextsOnly) {
  const RegexDfa d = RegexDfa::compile(R"(\d{3}-\d{4}|[A-Z][a-z]+( [A-Z][a-z]+)*)");
  EXPECT_TRUE(d.matches("555-1234"));
  EXPECT_TRUE(d.matches("Ada Lovelace"));
  EXPECT_FALSE(d.matches("555-123"));
  EXPECT_FALSE(d.matches("555-12345"));
  EXPECT_FALSE(d.matches("ada"));
  EXPECT_FALSE(d.matches("Ada "));
  EXPECT_FALSE(d.matches(""));
  EXPECT_TRUE(prefix(d, "555-12"));
  EXPECT_TRUE(prefix(d, "Ada "));
  EXPECT_FALSE(prefix(d, "5a"));
  EXPECT_FALSE(prefix(d, "Ada  "));
}

TEST(RegexDfa, ReadsTheSyntaxPythonAndEcmaScriptShare) {
  struct Case {
    const char* pattern;
    std::vector<const char*> yes, no;
  };
  const std::vector<Case> cases{
      {"a.c", {"abc", "a.c", "a\xc3\xa9" "c"}, {"a\nc", "ac"}},
      {"[^a-c]", {"d", "\xe4\xb8\xad", "\n"}, {"a", "c", ""}},
      {R"([\w.-]+@[\w-]+\.[a-z]{2,3})", {"ada.l@x-y.org", "a@b.io"}, {"a@b.c", "a@b.info", "a b@c.de"}},
      {R"(\s*\S+)", {" \t\vx", "x"}, {" ", "x y"}},
      {R"((?:ab)+(?P<n>c|d)?(?<m>e)?)", {"ab", "ababd", "abce"}, {"abab c", "a"}},
      {R"(^x{2,}y{,2}z{1}$)", {"xxz", "xxxxyyz"}, {"xx", "xxyyyz", "xxzz"}},
      {"a{x}b{,}", {"a{x}", "a{x}bbb"}, {"a", "a{}"}},  // literal braces as in Python; {,} is {0,}
      {R"(\x41\u00e9\U0001F600[\b])", {"A\xc3\xa9\xf0\x9f\x98\x80\b"}, {"A"}},
      {"(a|)+|^b$", {"", "aaa", "b"}, {"ab"}},
      {"\xe4\xb8\xad+[\xc3\xa0-\xc3\xbf]", {"\xe4\xb8\xad\xe4\xb8\xad\xc3\xa9"}, {"\xe4\xb8\xad" "e"}},
      {"a*?b+?c??", {"b", "aabbc"}, {"c"}},
      {R"([^\ud800-\udfff]x[\u0000-\udfff])", {"\xe4\xb8\xadx\xed\x9f\xbf", "axb"}, {"ax\xee\x80\x80"}},
  };
  for (const Case& c : cases) {
    const RegexDfa d = RegexDfa::compile(c.pattern);
    for (const char* s : c.yes) EXPECT_TRUE(d.matches(s)) << c.pattern << " on " << s;
    for (const char* s : c.no) EXPECT_FALSE(d.matches(s)) << c.pattern << " on " << s;
  }
}

TEST(RegexDfa, KeepsOnlyStatesThatReachAMatch) {
  // "ab" leads nowhere but "ac" does: after "a", only 'c' continues, and a text never strands.
  const RegexDfa d = RegexDfa::compile("ab[^\\x00-\\U0010FFFF]|ac");
  EXPECT_TRUE(prefix(d, "a"));
  EXPECT_FALSE(prefix(d, "ab"));
  for (int32_t s = 0; s < d.num_states(); ++s) EXPECT_TRUE(d.accepting(s) || d.extendable(s)) << s;
  // A multi-byte class is walked byte by byte: the lead byte of a 2-byte character is a prefix.
  const RegexDfa e = RegexDfa::compile("[\xc3\xa0-\xc3\xbf]");
  EXPECT_TRUE(prefix(e, "\xc3"));
  EXPECT_FALSE(prefix(e, "\xc2"));
  EXPECT_FALSE(prefix(e, "\xc3\x80"));
  EXPECT_FALSE(e.accepting(e.walk(RegexDfa::start(), "\xc3")));
}

TEST(RegexDfa, RefusesWhatItDoesNotSupportByName) {
  const std::vector<std::pair<const char*, const char*>> refused{
      {R"((a)\1)", "backreferences"},
      {"(?=a)a", "lookaround"},
      {"(?<!a)b", "lookaround"},
      {R"(\bword)", "word boundaries"},
      {"(?i)abc", "inline flags"},
      {"a*+", "possessive"},
      {"a{2}{3}", "multiple repeat"},
      {"*a", "nothing to repeat"},
      {"^*", "nothing to repeat"},
      {"a^b", "'^'"},
      {"(a$)", "'$'"},
      {R"(\p{L})", "property"},
      {R"(\Aa)", "bad escape"},
      {"(ab", "missing )"},
      {"ab)", "unbalanced"},
      {"[a-", "unterminated"},
      {"[z-a]", "bad character range"},
      {R"([\d-z])", "bad character range"},
      {"a{3,2}", "min repeat greater"},
      {"a{10001}", "repetition count"},
      {"\\", "backslash"},
      {R"(\x4)", "hex digits"},
      {R"(\ud800)", "scalar value"},
      {"[^\\x00-\\U0010FFFF]", "matches no text"},
      {"(a|b)*a(a|b){16}", "too complex"},
      {"(((a{100}){100}){100})", "too complex"},
      {"(?:(?:(?:){10000}){10000}){10000}", "too complex"},  // bodies that add no state
      {"(?:(?:a{0}){10000}){10000}", "too complex"},
  };
  for (const auto& [pattern, what] : refused) {
    try {
      RegexDfa::compile(pattern);
      ADD_FAILURE() << pattern << " was compiled";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr(what)) << pattern;
    }
  }
  EXPECT_THROW(RegexDfa::compile(std::string(kMaxRegexBytes + 1, 'a')), InvalidArgument);
  EXPECT_THROW(RegexDfa::compile(std::string(300, '(') + std::string(300, ')')), InvalidArgument);
  EXPECT_THROW(RegexDfa::compile("\xff"), InvalidArgument);
}

TEST(RegexDfa, LargeButBoundedPatternsCompile) {
  const RegexDfa d = RegexDfa::compile(R"([^"\\]{0,2000})");
  EXPECT_TRUE(d.matches(std::string(2000, 'x')));
  EXPECT_FALSE(d.matches(std::string(2001, 'x')));
  EXPECT_LE(d.num_states(), RegexDfa::kMaxStates);
  EXPECT_NO_THROW(RegexDfa::compile("(a|b)*a(a|b){10}"));  // 2^11 states
}

class RegexConstraintTest : public DefaultModelTest {};

TEST_F(RegexConstraintTest, TheMaskKeepsExactlyTheIdsThatStayOnAMatchsWay) {
  const Tokenizer& tok = model_->tokenizer;
  const auto V = static_cast<int32_t>(model_->config.vocab_size);
  const VocabularyBytes vocab(tok, V);
  const int32_t eos = tok.eos_id();
  const std::vector<int32_t> stops{eos};
  const auto dfa = std::make_shared<const RegexDfa>(RegexDfa::compile(R"((yes|no), [0-9]{1,2}( points)?)"));
  RegexText t(dfa);
  std::mt19937 rng(7);
  std::vector<float> logits(static_cast<size_t>(V));
  int step = 0;
  for (const std::string_view piece : {"", "ye", "s, ", "4", "2", " points"}) {
    ASSERT_TRUE(t.push(piece)) << piece;
    std::normal_distribution<float> n;
    for (float& l : logits) l = n(rng);
    const std::vector<float> before = logits;
    const auto t0 = std::chrono::steady_clock::now();
    constrain_text(t, vocab, stops, /*may_stop=*/true, logits);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    RecordProperty("constrain_ms_after_" + std::to_string(++step), std::to_string(ms));  // bench/RESULTS.md §2
    for (int32_t id = 0; id < V; ++id) {
      const std::string_view b = vocab.text(id);
      const bool stop_ok = id == eos && t.complete();
      const bool text_ok = !b.empty() && t.accepts(b) && (id != eos);
      const float l = logits[static_cast<size_t>(id)];
      if (stop_ok || text_ok) {
        EXPECT_EQ(l, before[static_cast<size_t>(id)]) << piece << " id " << id;
      } else {
        EXPECT_EQ(l, -INFINITY) << piece << " id " << id;
      }
    }
  }
  EXPECT_TRUE(t.complete());
  EXPECT_FALSE(t.extendable());  // only the stop is left
  EXPECT_EQ(std::count_if(logits.begin(), logits.end(), [](float l) { return std::isfinite(l); }), 1);
}

TEST_F(RegexConstraintTest, TheEngineAnswersWithAMatch) {
  Engine e(*model_, profiles(), EngineConfig{});
  const Tokenizer& tok = model_->tokenizer;
  const auto dfa = std::make_shared<const RegexDfa>(
      RegexDfa::compile(R"((Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, [1-9]\d? (January|March) 20\d\d)"));
  int i = 0;
  for (float temperature : {0.0f, 1.0f, 1.0f, 1.5f}) {
    Request r;
    r.id = "regex-" + std::to_string(i);
    r.prompt = tok.encode("<|im_start|>user\nName a date.<|im_end|>\n<|im_start|>assistant\n", false, true);
    r.end_of_turn = tok.token_id("<|im_end|>");
    r.max_tokens = 40;
    r.sampling.temperature = temperature;
    r.sampling.seed = ++i;
    r.regex = dfa;
    const auto [text, last] = drain_stream(*e.submit(r));
    ASSERT_TRUE(last.finished);
    EXPECT_EQ(last.finish_reason, FinishReason::kStop) << text;
    EXPECT_TRUE(dfa->matches(text)) << text;
  }
  Request both;
  both.prompt = {1, 2};
  both.regex = dfa;
  both.choices = ChoiceText::sorted({"a"});
  EXPECT_THROW(e.submit(both), InvalidArgument);
}

}  // namespace
}  // namespace sparseserve
