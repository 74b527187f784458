// engine/grammar: GBNF parsing (errors name the line and the problem), whole-text matching against
// std::regex on grammars that are regular (random texts over a small alphabet), matching of
// context-free languages (balanced brackets, arithmetic, JSON), and GrammarText's prefix semantics:
// accepts() exactly when some whole derivation begins with the text, UTF-8 cut anywhere inside a
// code point, complete() / extendable(); and the per-step mask over the default model's vocabulary,
// each id's verdict (accepts: a depth-first search) equal to pushing it (stack sets), timed.
#include "engine/grammar.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <random>
#include <regex>

#include "common/errors.h"
#include "engine/text_constraint.h"
#include "engine/vocabulary_bytes.h"
#include "tests/engine/default_model_fixture.h"

namespace sparseserve {
namespace {

using ::testing::HasSubstr;

std::string error_of(std::string_view text) {
  try {
    Grammar::parse(text);
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "no error";
}

TEST(GrammarTest, BadGrammarsAreRefusedWithTheLineAndTheProblem) {
  EXPECT_THAT(error_of("answer ::= \"yes\"\n"), HasSubstr("no rule 'root'"));
  EXPECT_THAT(error_of("root ::= a\n\nb ::= \"x\"\n"), HasSubstr("line 1: rule 'a' is used but not defined"));
  EXPECT_THAT(error_of("root ::= \"a\"\nroot ::= \"b\"\n"), HasSubstr("line 2: rule 'root' is defined twice"));
  EXPECT_THAT(error_of("root ::= \"abc\n"), HasSubstr("unterminated string literal"));
  EXPECT_THAT(error_of("root ::= [a-z\n"), HasSubstr("unterminated character class"));
  EXPECT_THAT(error_of("root ::= [z-a]\n"), HasSubstr("end comes before its start"));
  EXPECT_THAT(error_of("root ::= \"\\q\"\n"), HasSubstr("unknown escape"));
  EXPECT_THAT(error_of("root ::= (\"a\"\n"), HasSubstr("expected ')'"));
  EXPECT_THAT(error_of("root = \"a\"\n"), HasSubstr("expected '::='"));
  EXPECT_THAT(error_of("root ::= \"a\"{3,1}\n"), HasSubstr("n < m"));
  EXPECT_THAT(error_of("root ::= \"a\"{5000}\n"), HasSubstr("repetition count over 1000"));
  EXPECT_THAT(error_of("root ::= expr\nexpr ::= expr \"+\" \"1\" | \"1\"\n"), HasSubstr("'expr' is left-recursive"));
  EXPECT_THAT(error_of("root ::= a\na ::= b? a \"x\" | \"z\"\nb ::= \"y\"\n"), HasSubstr("left-recursive"));
  EXPECT_THAT(error_of("root ::= \"" + std::string(100, 'x') + "\"{1000}\n"), HasSubstr("too large"));
  EXPECT_THAT(error_of("root ::= \"a\" )\n"), HasSubstr("line 1: unexpected ')'"));
  // Limits that keep parsing and matching from recursing without bound.
  EXPECT_THAT(error_of("root ::= " + std::string(300, '(') + "\"a\"" + std::string(300, ')') + "\n"),
              HasSubstr("nested deeper than 256"));
  std::string chain = "root ::= r0\n";
  for (int i = 0; i < 5000; ++i) chain += fmt::format("r{} ::= r{}\n", i, i + 1);
  chain += "r5000 ::= \"a\"\n";
  const Grammar deep = Grammar::parse(chain);  // 5002 rules: parsed, but no text can be expanded
  EXPECT_THROW(GrammarText(std::make_shared<const Grammar>(deep)), InvalidArgument);
  std::string many = "root ::= \"a\"\n";
  for (int i = 0; i < 10000; ++i) many += fmt::format("r{} ::= \"b\"\n", i);
  EXPECT_THAT(error_of(many), HasSubstr("more than 10000 rules"));
  EXPECT_THAT(error_of("root ::= \"\xC0\x80\"\n"), HasSubstr("invalid UTF-8"));  // overlong
  EXPECT_THAT(error_of("root ::= \"\xF8\x80\x80\x80\"\n"), HasSubstr("invalid UTF-8"));
  EXPECT_THAT(error_of("root ::= loop\nloop ::= \"c\" loop\n"), HasSubstr("'root' derives no text"));
  EXPECT_THAT(error_of("root ::= [] | \"\\uD800\"\n"), HasSubstr("'root' derives no text"));
}

// Regular grammars and the equivalent ECMAScript regexes: every text over the alphabet up to length
// 6 (and random longer ones) is matched by both or neither.
TEST(GrammarTest, RegularGrammarsMatchWhatTheEquivalentRegexMatches) {
  struct Case {
    const char* grammar;
    const char* regex;
  };
  const Case cases[] = {
      {"root ::= (\"ab\" | \"c\")+ [0-9]{1,3}", "(ab|c)+[0-9]{1,3}"},
      {"root ::= \"a\"* \"b\"? c{2}\nc ::= [^ab]", "a*b?[^ab]{2}"},
      {"root ::= x{2,}\nx ::= \"a\" | \"b\" \"c\"", "(a|bc){2,}"},
      {"root ::= ( [a-b] \"0\"? )* \"1\"", "([a-b]0?)*1"},
      {"# comment\nroot ::=\n  \"c\" # trailing\n  | . \"a\"{0,2}", "c|[^]a{0,2}"},
  };
  const std::string alphabet = "abc01";
  std::mt19937_64 rng(7);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.grammar);
    const Grammar g = Grammar::parse(c.grammar);
    const std::regex re(c.regex);
    std::vector<std::string> texts{""};
    for (size_t begin = 0, len = 0; len < 6; ++len) {
      const size_t end = texts.size();
      for (size_t i = begin; i < end; ++i) {
        for (const char ch : alphabet) texts.push_back(texts[i] + ch);
      }
      begin = end;
    }
    for (int k = 0; k < 2000; ++k) {
      std::string t(std::uniform_int_distribution<size_t>(7, 14)(rng), ' ');
      for (char& ch : t) ch = alphabet[std::uniform_int_distribution<size_t>(0, alphabet.size() - 1)(rng)];
      texts.push_back(t);
    }
    int matched = 0;
    for (const std::string& t : texts) {
      const bool want = std::regex_match(t, re);
      ASSERT_EQ(g.matches(t), want) << "'" << t << "'";
      matched += want;
    }
    EXPECT_GT(matched, 5);
  }
}

// Alternatives no text can finish are dropped, so nothing the text accepts leads to a dead end.
TEST(GrammarTest, AlternativesThatCannotFinishAreDropped) {
  const auto g = std::make_shared<const Grammar>(
      Grammar::parse("root ::= \"a\" [] | \"b\" loop | \"b\" \"x\" | \"c\" \"\\uD800\"\nloop ::= \"c\" loop\n"));
  GrammarText t(g);
  EXPECT_FALSE(t.accepts("a"));
  EXPECT_FALSE(t.accepts("c"));
  EXPECT_FALSE(t.accepts("bc"));
  EXPECT_TRUE(t.accepts("bx"));
  EXPECT_TRUE(g->matches("bx"));
}

// Nullable alternatives reached by many paths expand once each: these took seconds (and
// gigabytes) while every path was expanded.
TEST(GrammarTest, AmbiguousNullableGrammarsStayCheap) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto g = std::make_shared<const Grammar>(Grammar::parse("root ::= (\"a\"? | \"b\"?){0,40} \"c\"\n"));
  GrammarText t(g);
  EXPECT_TRUE(t.accepts("abba"));
  ASSERT_TRUE(t.push("abbac"));
  EXPECT_TRUE(t.complete());
  std::string chain = "root ::= r0\n";
  for (int i = 0; i < 30; ++i) chain += fmt::format("r{} ::= r{} | r{}\n", i, i + 1, i + 1);
  chain += "r30 ::= \"z\"\n";
  EXPECT_TRUE(Grammar::parse(chain).matches("z"));
  const auto e = std::make_shared<const Grammar>(Grammar::parse("root ::= s\ns ::= \"a\" s e | \"x\"\ne ::= \"\" | \"\"\n"));
  GrammarText u(e);
  ASSERT_TRUE(u.push(std::string(40, 'a')));
  EXPECT_TRUE(u.accepts("x"));
  EXPECT_FALSE(u.accepts("xy"));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
}

TEST(GrammarTest, ContextFreeLanguages) {
  const Grammar brackets = Grammar::parse("root ::= b\nb ::= (\"(\" b \")\" | \"[\" b \"]\")*\n");
  for (const char* yes : {"", "()", "([])", "()[()]", "[[[]]]()"}) EXPECT_TRUE(brackets.matches(yes)) << yes;
  for (const char* no : {"(", "(]", "([)]", ")(", "[[]"}) EXPECT_FALSE(brackets.matches(no)) << no;

  const Grammar arith = Grammar::parse(R"G(root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= [0-9]+ | "(" expr ")"
)G");
  for (const char* yes : {"1", "12+3*4", "(1+2)*3", "((7))", "1-2/3+(4*5)"}) EXPECT_TRUE(arith.matches(yes)) << yes;
  for (const char* no : {"", "1+", "(1", "1++2", "()", "a"}) EXPECT_FALSE(arith.matches(no)) << no;

  // llama.cpp's json.gbnf, as written there (line breaks inside groups, comments).
  const Grammar json = Grammar::parse(R"G(root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
)G");
  for (const char* yes : {R"({})", R"({"a": 1})", R"({"k": [1, 2.5, -3e4, "x\n\u00e9"], "t": true} )",
                          "{\"naïve\": null}"}) {
    EXPECT_TRUE(json.matches(yes)) << yes;
  }
  for (const char* no : {"[]", R"({"a": })", R"({"a" 1})", "{\"a\": 01x}", "{\"\x01\": 1}"}) EXPECT_FALSE(json.matches(no)) << no;
}

TEST(GrammarTest, TextAcceptsExactlyPrefixesOfDerivations) {
  const auto g = std::make_shared<const Grammar>(Grammar::parse("root ::= \"yes\" | \"no\" | \"n\" [a-z]{3}\n"));
  GrammarText t(g);
  EXPECT_FALSE(t.complete());
  EXPECT_TRUE(t.extendable());
  EXPECT_TRUE(t.accepts("y"));
  EXPECT_TRUE(t.accepts("yes"));
  EXPECT_FALSE(t.accepts("yess"));
  EXPECT_FALSE(t.accepts("x"));
  EXPECT_FALSE(t.push("maybe"));
  ASSERT_TRUE(t.push("n"));
  EXPECT_FALSE(t.complete());
  ASSERT_TRUE(t.push("o"));
  EXPECT_TRUE(t.complete());     // "no"
  EXPECT_TRUE(t.extendable());   // "nope" still ahead
  EXPECT_TRUE(t.accepts("pe"));
  EXPECT_FALSE(t.accepts("pes"));
  ASSERT_TRUE(t.push("pe"));
  EXPECT_TRUE(t.complete());
  EXPECT_FALSE(t.extendable());
  EXPECT_FALSE(t.accepts("s"));
}

TEST(GrammarTest, Utf8CutInsideACodePoint) {
  // é is C3 A9, 中 is E4 B8 AD, 😀 is F0 9F 98 80.
  const auto g = std::make_shared<const Grammar>(Grammar::parse("root ::= \"é\" [一-鿿]+ \"😀\"?\n"));
  GrammarText t(g);
  EXPECT_TRUE(t.accepts("\xC3"));
  EXPECT_FALSE(t.accepts("\xC4"));      // starts only code points past é
  EXPECT_FALSE(t.accepts("\xA9"));      // a continuation byte first
  ASSERT_TRUE(t.push("\xC3"));
  EXPECT_FALSE(t.complete());
  EXPECT_TRUE(t.extendable());
  EXPECT_FALSE(t.accepts("\xAA"));      // ê
  ASSERT_TRUE(t.push("\xA9\xE4"));
  EXPECT_TRUE(t.accepts("\xB8\xAD"));
  EXPECT_FALSE(t.accepts("\x80\x80"));  // U+4000 is outside the class
  ASSERT_TRUE(t.push("\xB8"));
  ASSERT_TRUE(t.push("\xAD"));
  EXPECT_TRUE(t.complete());
  EXPECT_TRUE(t.accepts("\xF0\x9F"));
  EXPECT_FALSE(t.accepts("\xF0\x90"));  // U+10000..: not the emoji's block
  EXPECT_FALSE(t.accepts("\xED\xA0"));  // a surrogate
  EXPECT_FALSE(t.accepts("\xC0\x80"));  // overlong
  ASSERT_TRUE(t.push("\xF0\x9F\x98"));
  EXPECT_FALSE(t.complete());
  ASSERT_TRUE(t.push("\x80"));
  EXPECT_TRUE(t.complete());
  EXPECT_FALSE(t.extendable());
  EXPECT_TRUE(g->matches("é中文😀"));
  EXPECT_FALSE(g->matches("é😀"));

  // Hangul from U+D000 begins with ED, as surrogates do: ED 80..9F is text, ED A0..BF never.
  const auto hangul = std::make_shared<const Grammar>(Grammar::parse("root ::= [가-힣]+\n"));
  GrammarText h(hangul);
  EXPECT_TRUE(h.accepts("\xED"));
  EXPECT_TRUE(h.accepts("\xED\x95"));  // the first two bytes of 한 (U+D55C)
  EXPECT_FALSE(h.accepts("\xED\xA0"));
  ASSERT_TRUE(h.push("\xED"));
  ASSERT_TRUE(h.push("\x95\x9C"));
  EXPECT_TRUE(h.complete());
}


using GrammarMaskTest = DefaultModelTest;

// The mask keeps exactly the ids whose bytes the stack sets take (GrammarText::push on a copy), at
// points of llama.cpp's JSON grammar where few, some and nearly all ids continue; each mask's time
// is recorded (constrain_ms_after_K; bench/RESULTS.md §2).
TEST_F(GrammarMaskTest, KeepsExactlyTheIdsTheStackSetsTake) {
  const VocabularyBytes vocab(model_->tokenizer, static_cast<int32_t>(model_->config.vocab_size));
  const auto g = std::make_shared<const Grammar>(Grammar::parse(R"G(root ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
)G"));
  const char* texts[] = {"", "{\"key\": \"", "{\"key\": \"caf\xC3", "{\"a\": [1, {\"b\": [", "{\"a\": 12"};
  for (size_t k = 0; k < std::size(texts); ++k) {
    SCOPED_TRACE(texts[k]);
    GrammarText t(g);
    ASSERT_TRUE(t.push(texts[k]));
    std::vector<float> logits(static_cast<size_t>(vocab.size()), 0.0f);
    const auto t0 = std::chrono::steady_clock::now();
    constrain_text(t, vocab, {}, false, logits);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    RecordProperty("constrain_ms_after_" + std::to_string(k), std::to_string(ms));
    int64_t kept = 0;
    for (int32_t id = 0; id < vocab.size(); ++id) {
      const std::string_view bytes = vocab.text(id);
      GrammarText copy = t;
      const bool want = !bytes.empty() && copy.push(bytes);
      ASSERT_EQ(logits[static_cast<size_t>(id)] != -INFINITY, want) << "id " << id << " '" << bytes << "'";
      kept += want;
    }
    EXPECT_GT(kept, 0);
    std::printf("after '%s': %lld ids kept, mask %.2f ms\n", texts[k], static_cast<long long>(kept), ms);
  }
}

// Masks from MaskCache equal the masks made id by id, step after step through a JSON document
// written token by token (its states inside strings and between elements come back: hits), and the
// cache keeps at most its capacity. Times of a miss and of a hit inside a string are recorded
// (bench/RESULTS.md §2).
TEST_F(GrammarMaskTest, CachedMasksEqualMasksMadeIdById) {
  const VocabularyBytes vocab(model_->tokenizer, static_cast<int32_t>(model_->config.vocab_size));
  const auto g = std::make_shared<const Grammar>(Grammar::parse(R"G(root ::= "{" ws (pair ("," ws pair)*)? "}"
pair ::= string ":" ws value
value ::= string | number | "[" ws (value ("," ws value)*)? "]" ws
string ::= "\"" [^"\\]* "\"" ws
number ::= "-"? [0-9]+ ws
ws ::= " "?
)G"));
  const std::string doc = R"({"name": "Ada Lovelace", "born": 1815, "tags": ["math", "poetry", "engines"], "id": 7})";
  const std::vector<int32_t> ids = model_->tokenizer.encode(doc, false);
  GrammarText t(g);
  MaskCache cache(8);
  std::string so_far;
  double hit_ms = 0, miss_ms = 0;
  for (const int32_t id : ids) {
    SCOPED_TRACE(so_far);
    std::vector<float> plain(static_cast<size_t>(vocab.size()), 0.0f), cached = plain;
    constrain_text(t, vocab, {}, false, plain);
    const int64_t hits = cache.hits();
    const auto t0 = std::chrono::steady_clock::now();
    constrain_text(t, vocab, {}, false, cached, &cache);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    (cache.hits() > hits ? hit_ms : miss_ms) = ms;
    ASSERT_EQ(plain, cached);
    ASSERT_NE(plain[static_cast<size_t>(id)], -INFINITY) << "the document's own token";
    ASSERT_TRUE(t.push(vocab.text(id)));
    so_far += vocab.text(id);
  }
  EXPECT_EQ(so_far, doc);
  EXPECT_GT(cache.hits(), 0);
  EXPECT_GT(cache.misses(), 0);
  RecordProperty("cached_mask_hit_ms", std::to_string(hit_ms));
  RecordProperty("cached_mask_miss_ms", std::to_string(miss_ms));
  std::printf("%zu tokens: %lld hits, %lld misses; last hit %.2f ms, last miss %.2f ms\n", ids.size(),
              static_cast<long long>(cache.hits()), static_cast<long long>(cache.misses()), hit_ms, miss_ms);
}

TEST(MaskCacheTest, KeepsTheMostRecentlyUsedStates) {
  MaskCache cache(2);
  cache.lookup("a", 100).accepted[1] = 7;
  cache.lookup("b", 100);
  EXPECT_EQ(cache.lookup("a", 100).accepted[1], 7u) << "a is now the most recent";
  cache.lookup("c", 100);  // drops b
  EXPECT_EQ(cache.misses(), 3);
  EXPECT_EQ(cache.lookup("a", 100).accepted[1], 7u);
  cache.lookup("b", 100);  // made again, empty; drops c
  EXPECT_EQ(cache.lookup("b", 100).known, std::vector<uint64_t>(2, 0));
  EXPECT_EQ(cache.hits(), 3);
  EXPECT_EQ(cache.misses(), 4);
}

// Verdicts are made only for ids asked about: an id at −∞ in one step and finite in a later one in
// the same state is judged then (the mask still equals the id-by-id one).
TEST_F(GrammarMaskTest, VerdictsAreMadeAsIdsAreAskedAbout) {
  const VocabularyBytes vocab(model_->tokenizer, static_cast<int32_t>(model_->config.vocab_size));
  const auto g = std::make_shared<const Grammar>(Grammar::parse(R"G(root ::= "[" [0-9]+ ("," [0-9]+)* "]")G"));
  GrammarText t(g);
  ASSERT_TRUE(t.push("[1"));
  MaskCache cache;
  std::vector<float> half(static_cast<size_t>(vocab.size()), 0.0f);
  for (size_t id = 0; id < half.size(); id += 2) half[id] = -INFINITY;  // odd ids only
  constrain_text(t, vocab, {}, false, half, &cache);
  std::vector<float> all(static_cast<size_t>(vocab.size()), 0.0f), plain = all;
  constrain_text(t, vocab, {}, false, all, &cache);  // the same state: even ids judged now
  constrain_text(t, vocab, {}, false, plain);
  EXPECT_EQ(all, plain);
  EXPECT_EQ(cache.hits(), 1);
  for (size_t id = 1; id < half.size(); id += 2) ASSERT_EQ(half[id], plain[id]) << id;
}

}  // namespace
}  // namespace sparseserve
