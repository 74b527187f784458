// parse_json_bounded against nlohmann's own parsers: the same values as json::parse, the keys in the
// text's order as ordered_json::parse keeps them, the depth limit, the parser's error messages, and
// time linear in an object's members.
#include "engine/json_file.h"

#include <gtest/gtest.h>

#include <chrono>
#include <iterator>
#include <string>

namespace sparseserve {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

std::string keys_of(const ordered_json& o) {
  std::string out;
  for (const auto& [k, v] : o.items()) out += k + ",";
  return out;
}

TEST(JsonBounded, ReadsWhatNlohmannReadsKeepingTheTextsKeyOrderWhenOrdered) {
  const std::string text =
      R"({"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"enum": [3, "b", null, true]},)"
      R"( "mid": {"type": "number", "minimum": -1.5e3}}, "required": ["zeta", "alpha"], "additionalProperties": false,)"
      R"( "big": 18446744073709551615, "neg": -9223372036854775808, "s": "\u00e9\ud83d\ude00\n", "e": {}, "a": []})";
  const ordered_json v = parse_json_bounded<ordered_json>(text);
  ASSERT_TRUE(v.is_object());
  EXPECT_EQ(v, ordered_json::parse(text));  // order and values, as ordered_json's own (quadratic) parse
  EXPECT_EQ(v.dump(), ordered_json::parse(text).dump());
  EXPECT_EQ(keys_of(v), "type,properties,required,additionalProperties,big,neg,s,e,a,");
  EXPECT_EQ(keys_of(v["properties"]), "zeta,alpha,mid,");
  EXPECT_EQ(parse_json_bounded<json>(text), json::parse(text));
  EXPECT_EQ(parse_json_bounded<json>(text).dump(), json::parse(text).dump());
  // Scalars and arrays at the root.
  EXPECT_EQ(parse_json_bounded<ordered_json>("[1, {\"b\": 1, \"a\": 2}, []]").dump(), "[1,{\"b\":1,\"a\":2},[]]");
  EXPECT_EQ(parse_json_bounded<json>("[1, {\"b\": 1, \"a\": 2}, []]").dump(), "[1,{\"a\":2,\"b\":1},[]]");
  EXPECT_EQ(parse_json_bounded<ordered_json>(" \"x\" "), ordered_json("x"));
  EXPECT_EQ(parse_json_bounded<json>("0"), json(0));
}

TEST(JsonBounded, ARepeatedKeyTakesItsLastValueAndOrderedItsFirstPlace) {
  const std::string text = R"({"b": 1, "a": 2, "b": {"y": 1, "x": 2}, "c": 3, "a": 4})";
  EXPECT_EQ(parse_json_bounded<ordered_json>(text).dump(), R"({"b":{"y":1,"x":2},"a":4,"c":3})");
  EXPECT_EQ(parse_json_bounded<ordered_json>(text), ordered_json::parse(text));
  EXPECT_EQ(parse_json_bounded<json>(text), json::parse(text));
}

TEST(JsonBounded, RefusesBadTextWithTheParsersMessage) {
  for (const char* bad : {"", "{", "{\"a\": 1,}", "[1 2]", "{\"a\" 1}", "nul", "{} {}", "\"\\ud800\"", "01", "1e400"}) {
    std::string error, ordered_error;
    bool too_deep = true;
    EXPECT_TRUE(parse_json_bounded<json>(bad, kMaxJsonDepth, &too_deep, &error).is_discarded()) << bad;
    EXPECT_TRUE(parse_json_bounded<ordered_json>(bad, kMaxJsonDepth, nullptr, &ordered_error).is_discarded()) << bad;
    EXPECT_FALSE(too_deep) << bad;
    std::string thrown;
    try {
      const json parsed = json::parse(bad);
      ADD_FAILURE() << bad << " parsed as " << parsed.dump();
    } catch (const json::exception& e) {
      thrown = e.what();
    }
    EXPECT_EQ(error, thrown) << bad;
    EXPECT_EQ(ordered_error, thrown) << bad;
  }
}

TEST(JsonBounded, ContainersNestAtMostMaxDepthPlusOneDeep) {
  for (int depth : {1, 2, 3, 4, 5}) {
    for (const bool arrays : {true, false}) {
      std::string text;
      for (int i = 0; i < depth; ++i) text += arrays ? "[" : "{\"k\":";
      text += "0";
      for (int i = 0; i < depth; ++i) text += arrays ? "]" : "}";
      bool too_deep = false;
      EXPECT_EQ(parse_json_bounded<json>(text, 2, &too_deep).is_discarded(), depth > 3) << text;
      EXPECT_EQ(too_deep, depth > 3) << text;
      EXPECT_EQ(parse_json_bounded<ordered_json>(text, 2).is_discarded(), depth > 3) << text;
    }
  }
}

double seconds_to_parse(const std::string& text, bool ordered, size_t members) {
  const auto t0 = std::chrono::steady_clock::now();
  const size_t n = ordered ? parse_json_bounded<ordered_json>(text).size() : parse_json_bounded<json>(text).size();
  EXPECT_EQ(n, members);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(JsonBounded, ObjectsOfManyMembersParseInLinearTime) {
  // 200,000 keys (3.6 MB) in reverse order, and 200,000 empty objects as members. ordered_json's own
  // parse compares each key with every earlier one, and nlohmann's parse with a callback rescans an
  // object's members each time a member object ends: 2·10^10 steps, minutes. Linear, well under a second.
  constexpr int kMembers = 200'000;
  std::string keys = "{", objects = "{";
  for (int i = kMembers; i > 0; --i) {
    keys += "\"k" + std::to_string(i) + "\": " + std::to_string(i) + (i > 1 ? ", " : "}");
    objects += "\"k" + std::to_string(i) + "\": {}" + (i > 1 ? ", " : "}");
  }
  for (const std::string* text : {&keys, &objects}) {
    EXPECT_LT(seconds_to_parse(*text, /*ordered=*/true, kMembers), 20.0);
    EXPECT_LT(seconds_to_parse(*text, /*ordered=*/false, kMembers), 20.0);
  }
  const ordered_json v = parse_json_bounded<ordered_json>(keys);
  EXPECT_EQ(v.begin().key(), "k200000");
  EXPECT_EQ(std::prev(v.end()).key(), "k1");
}

}  // namespace
}  // namespace sparseserve
