// engine/json_prefix: the incremental JSON recognizer, by hand-written cases and against
// nlohmann::json's strict parser (an independent reference) on random documents and their mutations.
#include "engine/json_prefix.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <random>
#include <string>

namespace sparseserve {
namespace {

// The byte at which `text` is first refused, or -1 when every byte is taken.
int64_t first_refused(std::string_view text, bool root_object = false, int32_t ws = 1 << 30) {
  JsonPrefix p(root_object, ws);
  for (size_t i = 0; i < text.size(); ++i) {
    if (!p.push(static_cast<uint8_t>(text[i]))) return static_cast<int64_t>(i);
  }
  return -1;
}

bool whole(std::string_view text, bool root_object = false) {
  JsonPrefix p(root_object, 1 << 30);
  return p.push(text) && p.complete();
}

TEST(JsonPrefix, EveryPrefixOfAValidTextIsTakenAndOnlyTheWholeIsComplete) {
  const char* texts[] = {
      R"({})",
      R"({"a": 1, "b": [true, false, null], "c": {"d": "e"}})",
      R"({"n": [-0, 0.5, 12e3, -1.25E-7, 3e+2, 100]})",
      R"({"s": "tab\tquote\" slash\/ back\\ \u00e9 \ud83d\ude00 \u0000"})",
      "{\"utf8\": \"\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xed\x9f\xbf \xf4\x8f\xbf\xbf\"}",
      " \n\t{ \"k\" :\r\n [ ] } \n",
      R"({"deep": [[[[{"x": [{}]}]]]]})",
  };
  for (const char* text : texts) {
    const std::string s(text);
    JsonPrefix p;
    size_t end = s.find_last_not_of(" \t\r\n") + 1;
    for (size_t i = 0; i < s.size(); ++i) {
      ASSERT_TRUE(p.push(static_cast<uint8_t>(s[i]))) << s << " at byte " << i;
      EXPECT_EQ(p.complete(), i + 1 >= end) << s << " after byte " << i;
    }
    EXPECT_TRUE(nlohmann::json::accept(s)) << s;
  }
}

TEST(JsonPrefix, RefusesAtTheFirstByteNoContinuationCanMend) {
  const std::pair<const char*, int64_t> cases[] = {
      {R"({"a": 01})", 7},         // leading zero
      {R"({"a": 1.})", 8},         // a fraction needs a digit
      {R"({"a": .5})", 6},
      {R"({"a": +1})", 6},
      {R"({"a": 1e})", 8},
      {R"({"a": -})", 7},
      {R"({"a": 1,})", 8},         // trailing comma
      {R"([1, 2,])", 6},
      {R"({"a" 1})", 5},           // missing colon
      {R"({a: 1})", 1},            // unquoted key
      {R"({"a": tru})", 9},
      {R"({"a": nul1})", 9},
      {R"({"a": "x\q"})", 9},      // unknown escape
      {R"({"a": "\u12G4"})", 11},
      {R"({"a": "\ud800x"})", 13}, // a high surrogate needs a low one at once
      {R"({"a": "\ud800\u0041"})", 15},
      {R"({"a": "\udc00"})", 10},  // a lone low surrogate, at its second digit (no digit could finish it)
      {R"({"a": "\ud800\u4"})", 15},   // after a high surrogate, a \u must begin a low one (DC00-DFFF)
      {R"({"a": "\ud800\uDb"})", 16},
      {R"({"a": 1]})", 7},         // mismatched close
      {R"({} {})", 3},             // one text only
      {"{\"a\": \"\x01\"}", 7},    // raw control character
      {"{\"a\": \"\xc0\xaf\"}", 7},      // overlong lead
      {"{\"a\": \"\xe0\x80\x80\"}", 8},  // overlong 3-byte form
      {"{\"a\": \"\xed\xa0\x80\"}", 8},  // UTF-8 surrogate
      {"{\"a\": \"\xf4\x90\x80\x80\"}", 8},  // over U+10FFFF
      {"{\"a\": \"\xc3(\"}", 8},         // a continuation byte missing
      {"{\"a\": \"\xff\"}", 7},
  };
  for (const auto& [text, at] : cases) {
    EXPECT_EQ(first_refused(text), at) << text;
    EXPECT_FALSE(nlohmann::json::accept(text)) << text;
  }
}

TEST(JsonPrefix, RootObjectOnlyTakesAnObject) {
  EXPECT_EQ(first_refused("[1]", true), 0);
  EXPECT_EQ(first_refused("\"x\"", true), 0);
  EXPECT_EQ(first_refused("  7", true), 2);
  EXPECT_TRUE(whole("[1]"));
  EXPECT_TRUE(whole("12"));   // a root number is whole where it may end
  EXPECT_FALSE(whole("12", true));
  EXPECT_FALSE(whole("-"));
  EXPECT_TRUE(whole("{\"a\": [1]}", true));
}

TEST(JsonPrefix, NestingStopsAtTheDepthLimit) {
  std::string open(JsonPrefix::kMaxDepth, '[');
  JsonPrefix p(false);
  ASSERT_TRUE(p.push(open));
  EXPECT_EQ(p.depth(), JsonPrefix::kMaxDepth);
  JsonPrefix deeper = p;
  EXPECT_FALSE(deeper.push("["));
  EXPECT_FALSE(p.push("{"));
  JsonPrefix q(false);
  ASSERT_TRUE(q.push(open));
  EXPECT_TRUE(q.push(std::string(JsonPrefix::kMaxDepth, ']')));
  EXPECT_TRUE(q.complete());
  // Containers of both kinds at depths past 64 (the stack's second word) close in order.
  std::string mixed;
  for (int i = 0; i < 100; ++i) mixed += i % 3 == 0 ? "{\"k\":" : "[";
  mixed += "0";
  for (int i = 99; i >= 0; --i) mixed += i % 3 == 0 ? "}" : "]";
  EXPECT_TRUE(whole(mixed));
  EXPECT_TRUE(nlohmann::json::accept(mixed));
}

TEST(JsonPrefix, WhitespaceRunsAreLimitedBetweenTokensOnly) {
  JsonPrefix p(true, 3);
  EXPECT_TRUE(p.push("{   \"a   b\":"));
  EXPECT_FALSE(JsonPrefix(p).push("    "));
  EXPECT_TRUE(p.push("   1   }   "));
  EXPECT_TRUE(p.complete());
  EXPECT_FALSE(p.push(" "));
  EXPECT_TRUE(p.complete());
}

// A random JSON value of at most `depth` levels, with the kinds of strings and numbers a model writes.
nlohmann::json random_value(std::mt19937& rng, int depth) {
  std::uniform_int_distribution<int> kind(0, depth > 0 ? 8 : 5);
  const auto str = [&] {
    static const char* pieces[] = {"a", "key", " ", "\"", "\\", "/", "\n", "\t", "\x01", "\xc3\xa9", "\xe2\x82\xac",
                                   "\xf0\x9f\x98\x80", "0", "{", "]", ",", ":", "null"};
    std::string s;
    for (int n = std::uniform_int_distribution<int>(0, 6)(rng); n > 0; --n) {
      s += pieces[std::uniform_int_distribution<size_t>(0, std::size(pieces) - 1)(rng)];
    }
    return s;
  };
  switch (kind(rng)) {
    case 0: return nullptr;
    case 1: return std::uniform_int_distribution<int>(0, 1)(rng) == 1;
    case 2: return std::uniform_int_distribution<int64_t>(-100000, 100000)(rng);
    case 3: return std::uniform_real_distribution<double>(-1e6, 1e6)(rng) * (rng() % 2 ? 1e-9 : 1.0);
    case 4:
    case 5: return str();
    case 6:
    case 7: {
      nlohmann::json o = nlohmann::json::object();
      for (int n = std::uniform_int_distribution<int>(0, 4)(rng); n > 0; --n) o[str()] = random_value(rng, depth - 1);
      return o;
    }
    default: {
      nlohmann::json a = nlohmann::json::array();
      for (int n = std::uniform_int_distribution<int>(0, 4)(rng); n > 0; --n) a.push_back(random_value(rng, depth - 1));
      return a;
    }
  }
}

TEST(JsonPrefix, AgreesWithNlohmannOnRandomTextsAndMutations) {
  std::mt19937 rng(20261201);
  const char interesting[] = "{}[],:\"\\/ \n\t0123456789-+.eEtrufalsn\x01\x7f\x80\xbf\xc2\xe0\xed\xf0\xf4\xff";
  int64_t valid = 0, invalid = 0;
  for (int doc = 0; doc < 3000; ++doc) {
    const nlohmann::json v = random_value(rng, 4);
    const int indent = std::uniform_int_distribution<int>(-1, 2)(rng);
    const std::string text = v.dump(indent, ' ', /*ensure_ascii=*/rng() % 2 == 0);
    // Every prefix of a valid text is taken; it is whole at its end.
    JsonPrefix p(false, 1 << 30);
    ASSERT_TRUE(p.push(text)) << text;
    ASSERT_TRUE(p.complete()) << text;
    // Mutations: replace, insert or delete 1-3 bytes, or cut the text; then both must agree on
    // whether the result is a whole JSON text.
    std::string m = text;
    for (int k = std::uniform_int_distribution<int>(1, 3)(rng); k > 0; --k) {
      const size_t at = std::uniform_int_distribution<size_t>(0, m.size())(rng);
      const char c = interesting[std::uniform_int_distribution<size_t>(0, sizeof(interesting) - 2)(rng)];
      switch (rng() % 4) {
        case 0: if (at < m.size()) m[at] = c; break;
        case 1: m.insert(m.begin() + static_cast<std::ptrdiff_t>(at), c); break;
        case 2: if (at < m.size()) m.erase(at, 1); break;
        default: m.resize(at); break;
      }
    }
    bool reference = false;
    try {
      reference = !nlohmann::json::parse(m).is_discarded();
    } catch (const nlohmann::json::parse_error&) {
    } catch (const nlohmann::json::out_of_range&) {
      continue;  // a number past double's range: grammar-valid, refused by nlohmann's conversion
    }
    EXPECT_EQ(whole(m), reference) << "text: " << text << "\nmutated: " << m;
    (reference ? valid : invalid) += 1;
  }
  EXPECT_GT(valid, 200);
  EXPECT_GT(invalid, 1000);
}

}  // namespace
}  // namespace sparseserve
