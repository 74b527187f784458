// engine/json_schema and JsonPrefix under a schema: what compiles (and what is refused, naming the
// keyword), and which texts a schema takes, refuses at which byte, and counts as whole.
// tests/python/test_json_schema.py checks the same recognizer against the jsonschema library.
#include "engine/json_schema.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "common/errors.h"
#include "engine/json_prefix.h"
#include "engine/json_text.h"

namespace sparseserve {
namespace {

using ::testing::HasSubstr;

std::string refusal(std::string_view schema) {
  try {
    JsonSchema::compile(schema);
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

// -1: the whole text is taken; else the byte refused.
int64_t first_refused(const JsonSchema& s, std::string_view text) {
  JsonText p(JsonPrefix{s});
  for (size_t i = 0; i < text.size(); ++i) {
    if (!p.push(text.substr(i, 1))) return static_cast<int64_t>(i);
  }
  return -1;
}

bool whole(const JsonSchema& s, std::string_view text) {
  JsonText p(JsonPrefix{s});
  return p.push(text) && p.complete();
}

TEST(JsonSchema, RefusesWhatItCannotPromiseNamingTheKeyword) {
  EXPECT_THAT(refusal(R"({"type": "integer", "multipleOf": 2})"), HasSubstr("'multipleOf' is not supported (at #)"));
  EXPECT_THAT(refusal(R"({"type": "integer", "minimum": 3, "exclusiveMaximum": 3})"), HasSubstr("allow no number"));
  EXPECT_THAT(refusal(R"({"type": "number", "minimum": 0.5, "maximum": 0.4999999})"), HasSubstr("allow no number"));
  EXPECT_THAT(refusal(R"({"type": "integer", "maximum": 1e16})"), HasSubstr("at most 10^15"));
  EXPECT_THAT(refusal(R"({"type": "integer", "exclusiveMinimum": true})"), HasSubstr("'exclusiveMinimum' must be a number"));
  EXPECT_THAT(refusal(R"({"type": "string", "format": "uri"})"), HasSubstr(R"('format' "uri" is not supported)"));
  EXPECT_THAT(refusal(R"({"properties": {"a": {"pattern": "(a)\\1"}}})"), HasSubstr("backreferences"));
  EXPECT_THAT(refusal(R"({"type": "string", "pattern": "^\\d{4}$", "maxLength": 3})"),
              HasSubstr("allow no string (at #)"));
  EXPECT_THAT(refusal(R"({"type": "string", "minLength": 3, "maxLength": 2})"), HasSubstr("'minLength' is over"));
  EXPECT_THAT(refusal(R"({"properties": {"a": {"type": "integer", "multipleOf": 2}}})"),
              HasSubstr("'multipleOf' is not supported (at #/properties/a)"));
  EXPECT_THAT(refusal(R"({"type": "object", "additionalProperties": {"type": "integer", "multipleOf": 3}})"),
              HasSubstr("'multipleOf' is not supported (at #/additionalProperties)"));
  EXPECT_THAT(refusal(R"({"type": "object", "patternProperties": {"a": {}}})"), HasSubstr("'patternProperties'"));
  EXPECT_THAT(refusal(R"({"properties": {"a": {}}, "required": ["b"]})"), HasSubstr("\"b\" is not in 'properties'"));
  std::string many = R"({"anyOf": [)";
  for (int i = 0; i < 65; ++i) many += (i ? ", " : "") + std::string(R"({"const": )") + std::to_string(i) + "}";
  EXPECT_THAT(refusal(many + "]}"), HasSubstr("more than 64 alternatives"));
  // oneOf: alternatives that may begin alike only as a tagged union (no value may match two).
  EXPECT_THAT(refusal(R"({"oneOf": [{"type": "integer"}, {"type": "number"}]})"), HasSubstr("discriminator"));
  EXPECT_THAT(refusal(R"({"oneOf": [{"type": "object", "properties": {"k": {"const": "a"}}},
                                    {"type": "object", "properties": {"k": {"const": "b"}}}]})"),
              HasSubstr("(at #)"));  // the tag is not required
  EXPECT_THAT(refusal(R"({"oneOf": [{"type": "object", "properties": {"k": {"enum": ["a", "b"]}}, "required": ["k"]},
                                    {"type": "object", "properties": {"k": {"const": "b"}}, "required": ["k"]}]})"),
              HasSubstr("discriminator"));  // "b" tags both
  EXPECT_THAT(refusal(R"({"oneOf": [{"type": "object", "properties": {"t": {"const": 1}}, "required": ["t"]},
                                    {"type": "object", "properties": {"t": {"const": 1.0}}, "required": ["t"]}]})"),
              HasSubstr("discriminator"));  // 1 and 1.0 are one value: {"t": 1} matches both
  EXPECT_THAT(refusal(R"({"oneOf": [{"type": "object", "properties": {"t": {"enum": [0, "x"]}}, "required": ["t"]},
                                    {"type": "object", "properties": {"t": {"const": -0.0}}, "required": ["t"]}]})"),
              HasSubstr("discriminator"));
  EXPECT_EQ(refusal(R"({"oneOf": [{"type": "string"}, {"type": "null"}]})"), "");
  EXPECT_EQ(refusal(R"({"anyOf": [{"type": "integer"}, {"type": "number"}]})"), "");
  EXPECT_THAT(refusal(R"({"$ref": "#/$defs/Missing"})"), HasSubstr("not supported or not found"));
  EXPECT_THAT(refusal(R"({"$ref": "http://example.com/s.json"})"), HasSubstr("not supported or not found"));
  EXPECT_THAT(refusal(R"({"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"})"), HasSubstr("refers to itself"));
  EXPECT_THAT(refusal(R"({"type": "string", "enum": [1]})"), HasSubstr("not of the schema's type"));
  EXPECT_THAT(refusal(R"({"type": "thing"})"), HasSubstr("unknown type 'thing'"));
  EXPECT_THAT(refusal(R"({"type": "array", "items": [{}]})"), HasSubstr("'items' as a list"));
  EXPECT_THAT(refusal(R"({"type": "array", "minItems": 3, "maxItems": 2})"), HasSubstr("'minItems' is over"));
  EXPECT_THAT(refusal("false"), HasSubstr("allows no value"));
  EXPECT_THAT(refusal("{"), HasSubstr("not valid JSON"));
  EXPECT_EQ(refusal(R"({"title": "T", "description": "d", "type": "object", "properties": {}})"), "");
}

TEST(JsonSchema, AnObjectHasExactlyItsPropertiesEachOnceAndTheRequiredOnes) {
  const JsonSchema s = JsonSchema::compile(R"({
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "nick": {"type": ["string", "null"]},
                   "q\"uote": {"type": "boolean"}},
    "required": ["name", "age"]})");
  EXPECT_TRUE(whole(s, R"({"name": "Al", "age": 3})"));
  EXPECT_TRUE(whole(s, R"( { "age" : -30 , "nick":null, "name":"x", "q\"uote": true } )"));
  EXPECT_TRUE(whole(s, R"({"name": "Al", "age": 0, "nick": "A"})"));
  EXPECT_EQ(first_refused(s, R"({"name": "Al"})"), 13);            // '}' before "age"
  EXPECT_EQ(first_refused(s, R"({"nam": 1})"), 5);                  // no property is "nam"
  EXPECT_EQ(first_refused(s, R"({"names": 1})"), 6);
  EXPECT_EQ(first_refused(s, R"({"name": "a", "name": "b"})"), 16);  // each key once ("n" may begin "nick")
  EXPECT_EQ(first_refused(s, R"({"age": 3.5})"), 9);                // an integer
  EXPECT_EQ(first_refused(s, R"({"age": 1e3})"), 9);
  EXPECT_EQ(first_refused(s, R"({"name": 5})"), 9);                 // a string
  EXPECT_EQ(first_refused(s, R"({"nick": true})"), 9);
  EXPECT_EQ(first_refused(s, R"([])"), 0);
  // With every property written, no comma may follow.
  EXPECT_EQ(first_refused(s, R"({"name": "", "age": 1, "nick": null, "q\"uote": false,)"), 53);
}

TEST(JsonSchema, ArraysCountTheirItems) {
  const JsonSchema s = JsonSchema::compile(
      R"({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3})");
  EXPECT_TRUE(whole(s, "[1]"));
  EXPECT_TRUE(whole(s, "[1, 2, 3]"));
  EXPECT_EQ(first_refused(s, "[]"), 1);
  EXPECT_EQ(first_refused(s, "[1, 2, 3, 4]"), 8);
  EXPECT_EQ(first_refused(s, "[\"a\"]"), 1);
  const JsonSchema none = JsonSchema::compile(R"({"type": "array", "maxItems": 0})");
  EXPECT_TRUE(whole(none, "[ ]"));
  EXPECT_EQ(first_refused(none, "[1]"), 1);
  const JsonSchema any_items = JsonSchema::compile(R"({"type": "array"})");
  EXPECT_TRUE(whole(any_items, R"([1, "a", {"b": [null]}, []])"));
}

TEST(JsonSchema, EnumsAndConstsAreMatchedAsWritten) {
  const JsonSchema s = JsonSchema::compile(R"({"enum": ["red", "green", 1, 12, null, {"a": [1]}]})");
  EXPECT_TRUE(whole(s, "\"red\""));
  EXPECT_TRUE(whole(s, "1"));   // 1, or the start of 12
  EXPECT_TRUE(whole(s, "12"));
  EXPECT_TRUE(whole(s, "null"));
  EXPECT_TRUE(whole(s, "{\"a\":[1]}"));  // compact, as serializers write it
  EXPECT_FALSE(whole(s, "\"gre"));
  EXPECT_EQ(first_refused(s, "13"), 1);
  EXPECT_EQ(first_refused(s, "\"blue\""), 1);
  EXPECT_EQ(first_refused(s, "{\"a\": [1]}"), 5);
  const JsonSchema in_object = JsonSchema::compile(
      R"({"type": "object", "properties": {"n": {"enum": [1, 12]}, "c": {"const": "x"}}, "required": ["n", "c"]})");
  EXPECT_TRUE(whole(in_object, R"({"n": 1, "c": "x"})"));
  EXPECT_TRUE(whole(in_object, R"({"n": 12 ,"c":"x"})"));
  EXPECT_EQ(first_refused(in_object, R"({"n": 2)"), 6);
  EXPECT_EQ(first_refused(in_object, R"({"c": "y")"), 7);
}

TEST(JsonSchema, AnyOfPicksTheAlternativeByItsFirstByte) {
  const JsonSchema s = JsonSchema::compile(
      R"({"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": {"type": "boolean"}}]})");
  EXPECT_TRUE(whole(s, "\"x\""));
  EXPECT_TRUE(whole(s, "null"));
  EXPECT_TRUE(whole(s, "[true, false]"));
  EXPECT_EQ(first_refused(s, "[1]"), 1);
  EXPECT_EQ(first_refused(s, "1"), 0);
}

TEST(JsonSchema, RefsIntoDefsAndRecursion) {
  // Pydantic's shape: the root refers into $defs, and a model refers to itself.
  const JsonSchema s = JsonSchema::compile(R"({
    "$defs": {"Node": {"type": "object", "title": "Node",
                       "properties": {"v": {"type": "integer"},
                                      "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
                       "required": ["v"]}},
    "$ref": "#/$defs/Node"})");
  EXPECT_TRUE(whole(s, R"({"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": [{"v": 4, "kids": []}]}]})"));
  EXPECT_EQ(first_refused(s, R"({"v": 1, "kids": [{"w": 2}]})"), 20);
  const JsonSchema root = JsonSchema::compile(R"({"type": "object", "properties": {"next": {"$ref": "#"}}})");
  EXPECT_TRUE(whole(root, R"({"next": {"next": {}}})"));
  EXPECT_EQ(first_refused(root, R"({"next": 1})"), 9);
}

TEST(JsonSchema, RefusesSchemasNoTextCouldFinish) {
  const std::string deep = R"({"enum": [)" + std::string(300, '[') + std::string(300, ']') + "]}";
  EXPECT_THAT(refusal(deep), HasSubstr("nests deeper than 256"));
  EXPECT_THAT(refusal(R"({"anyOf": [{"$ref": "#"}]})"), HasSubstr("allows no value"));
  EXPECT_THAT(refusal(R"({"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]})"),
              HasSubstr("nested without end"));
  std::string nested = R"({"type": "integer"})";
  for (int i = 0; i < 33; ++i) nested = R"({"type": "array", "minItems": 1, "items": )" + nested + "}";
  EXPECT_THAT(refusal(nested), HasSubstr("deeper than 32"));
  EXPECT_THAT(refusal(R"({"const": 12345678901234567890123})"), HasSubstr("too large"));
}

TEST(JsonSchema, RefsResolveByTargetOnly) {
  // A $def whose name holds '/' is reached by its escaped pointer; an unescaped one is refused
  // (it would name a path into another def), and so is a pointer into properties.
  const JsonSchema s = JsonSchema::compile(R"({
    "type": "object",
    "properties": {"p": {"$ref": "#/$defs/A~1x"}, "q": {"$ref": "#/$defs/A"}},
    "$defs": {"A": {"type": "object", "properties": {"x": {"type": "integer"}}}, "A/x": {"type": "string"}}})");
  EXPECT_TRUE(whole(s, R"({"p": "s", "q": {"x": 1}})"));
  EXPECT_EQ(first_refused(s, R"({"p": 1)"), 6);
  EXPECT_THAT(refusal(R"({"properties": {"a": {"type": "string"}, "b": {"$ref": "#/properties/a"}}})"),
              HasSubstr("not supported or not found"));
  EXPECT_THAT(refusal(R"({"properties": {"b": {"$ref": "#/$defs/A/x"}}, "$defs": {"A": {}}})"),
              HasSubstr("not supported or not found"));
  // "#" of a root that is itself a $ref: the schema it names.
  const JsonSchema root_ref = JsonSchema::compile(
      R"({"$ref": "#/$defs/A", "$defs": {"A": {"type": "object", "properties": {"x": {"$ref": "#"}}}}})");
  EXPECT_TRUE(whole(root_ref, R"({"x": {"x": {}}})"));
  EXPECT_EQ(first_refused(root_ref, R"({"x": 1})"), 6);
}

TEST(JsonSchema, AliasDefsAreOneSchemaWhateverTheCompileOrder) {
  // m is only a $ref to n, and n refers back through m (or through "#" of a root $ref to m).
  for (const char* root : {"#/$defs/m", "#/$defs/n"}) {
    const JsonSchema s = JsonSchema::compile(std::string(R"({"$defs": {"m": {"$ref": "#/$defs/n"},
      "n": {"type": "object", "properties": {"a": {"$ref": "#/$defs/m"}}}}, "$ref": ")") + root + "\"}");
    EXPECT_TRUE(whole(s, R"({"a": {"a": {}}})")) << root;
    EXPECT_EQ(first_refused(s, R"({"a": 1})"), 6) << root;
  }
  const JsonSchema hash = JsonSchema::compile(R"({"$defs": {"m": {"$ref": "#/$defs/n"},
    "n": {"type": "object", "properties": {"a": {"$ref": "#"}}}}, "$ref": "#/$defs/m"})");
  EXPECT_TRUE(whole(hash, R"({"a": {"a": {}}})"));
  // Property names decide the compile order (nlohmann sorts keys): both orders compile.
  for (const char* props : {R"("k1": {"$ref": "#/$defs/a"}, "k2": {"$ref": "#/$defs/b"})",
                            R"("k1": {"$ref": "#/$defs/b"}, "k2": {"$ref": "#/$defs/a"})"}) {
    const JsonSchema s = JsonSchema::compile(std::string(R"({"$defs": {"a": {"$ref": "#/$defs/b"},
      "b": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}}}, "type": "object", "properties": {)") +
                                             props + "}}");
    EXPECT_TRUE(whole(s, R"({"k1": {"x": {}}, "k2": {"x": {"x": {}}}})")) << props;
  }
  EXPECT_THAT(refusal(R"({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})"),
              HasSubstr("refers to itself"));
  EXPECT_THAT(refusal(R"({"$ref": "#"})"), HasSubstr("refers to itself"));
}

TEST(JsonSchema, ContainersOpenOnlyWhereTheirLeastNestingFits) {
  // An optional self (or null) and a required array: deep in, the self can only be null, and the
  // array still fits.
  const JsonSchema s = JsonSchema::compile(R"({"type": "object",
    "properties": {"kid": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["kid", "tags"]})");
  std::string prefix;
  for (int i = 0; i < 31; ++i) prefix += R"({"kid": )";
  JsonPrefix p(s);
  ASSERT_TRUE(p.push(prefix));
  EXPECT_FALSE(JsonPrefix(p).push("{"));
  std::string text = prefix + R"(null, "tags": [])" + "}";
  for (int i = 1; i < 31; ++i) text += R"(, "tags": []})";
  EXPECT_TRUE(whole(s, text)) << text;
  // An optional property whose value cannot fit any more is not offered.
  std::string nest;
  for (int i = 0; i < 30; ++i) nest += "[";
  const JsonSchema in_arrays = JsonSchema::compile(
      std::string(R"({"type": "array", "items": {"anyOf": [{"$ref": "#"}, )") + R"({"type": "object", "properties": {
    "deep": {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "items": {}}}, "n": {"type": "null"}}}]}})");
  JsonPrefix q(in_arrays);
  ASSERT_TRUE(q.push(nest + "{"));  // depth 31: "deep" needs two more levels
  EXPECT_FALSE(JsonPrefix(q).push("\"d"));
  EXPECT_TRUE(q.push("\"n\": null}"));
}

TEST(JsonSchema, AnyValueAndTheDepthLimit) {
  const JsonSchema any = JsonSchema::compile("{}");
  EXPECT_TRUE(whole(any, R"([{"a": 1.5e3}, "x", true])"));
  EXPECT_TRUE(whole(any, "7"));
  const JsonSchema loose = JsonSchema::compile(R"({"type": "object", "properties": {"x": true}})");
  EXPECT_TRUE(whole(loose, R"({"x": {"deep": [[{"k": null}]]}})"));
  JsonPrefix p(any);
  EXPECT_TRUE(p.push(std::string(JsonPrefix::kMaxSchemaDepth, '[')));
  EXPECT_FALSE(p.push("["));
}

}  // namespace
}  // namespace sparseserve

namespace sparseserve {
namespace {

TEST(JsonSchema, StringsFollowTheirPatternFormatAndLengths) {
  const JsonSchema code = JsonSchema::compile(R"({"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"})");
  EXPECT_TRUE(whole(code, R"("AB-123")"));
  EXPECT_FALSE(whole(code, R"("AB-12")"));
  EXPECT_EQ(first_refused(code, R"("ab-123")"), 1);
  EXPECT_EQ(first_refused(code, R"("AB-1234")"), 7);  // the fourth digit
  EXPECT_EQ(first_refused(code, R"("AB-12)"), -1);    // a prefix: taken
  EXPECT_EQ(first_refused(code, R"("AB-12")"), 6);    // not whole: its end is refused
  // Unanchored: searched for anywhere; the escapes decode first ("\u" is never taken here).
  const JsonSchema search = JsonSchema::compile(R"({"type": "string", "pattern": "b\n+c"})");
  EXPECT_TRUE(whole(search, R"("xxb\n\ncyy")"));
  EXPECT_TRUE(whole(search, R"("b\nc")"));
  EXPECT_FALSE(whole(search, R"("bc")"));
  EXPECT_EQ(first_refused(search, R"("b\u000ac")"), 3);
  EXPECT_EQ(first_refused(search, "\"a\x01"), 2);  // a control character would need \u: never
  const JsonSchema date = JsonSchema::compile(R"({"type": "string", "format": "date"})");
  EXPECT_TRUE(whole(date, R"("2024-02-29")"));
  EXPECT_TRUE(whole(date, R"("2000-02-29")"));
  EXPECT_FALSE(whole(date, R"("1900-02-29")"));
  EXPECT_FALSE(whole(date, R"("2023-04-31")"));
  EXPECT_FALSE(whole(date, R"("0000-01-01")"));
  const JsonSchema dt = JsonSchema::compile(R"({"type": "string", "format": "date-time"})");
  EXPECT_TRUE(whole(dt, R"("2024-01-31T23:59:59.5+05:30")"));
  EXPECT_FALSE(whole(dt, R"("2024-01-31T23:59:59")"));  // RFC 3339 wants the offset
  const JsonSchema len = JsonSchema::compile(R"({"type": "string", "minLength": 2, "maxLength": 3})");
  EXPECT_FALSE(whole(len, "\"\xc3\xa9\""));  // one code point, two bytes
  EXPECT_TRUE(whole(len, "\"\xc3\xa9\xe4\xb8\xad\""));
  EXPECT_TRUE(whole(len, R"("a\"b")"));       // \" is one character
  EXPECT_EQ(first_refused(len, R"("abcd")"), 4);
  // Nested, with types inferred from the keywords, and the same rules compiled once.
  const JsonSchema obj = JsonSchema::compile(
      R"({"properties": {"id": {"format": "uuid"}, "ips": {"items": {"format": "ipv4"}}, "id2": {"format": "uuid"}},
          "required": ["id"]})");
  EXPECT_TRUE(whole(obj, R"({"id": "123e4567-E89B-12d3-a456-426614174000", "ips": ["10.0.0.1", "255.255.255.255"]})"));
  EXPECT_FALSE(whole(obj, R"({"id": "123e4567-e89b-12d3-a456-42661417400", "ips": []})"));
  EXPECT_NE(first_refused(obj, R"({"id": "123e4567-e89b-12d3-a456-426614174000", "ips": ["01.2.3.4"]})"), -1);
  const auto& props = obj.node(obj.root()).properties;  // id, id2, ips (sorted)
  ASSERT_EQ(props[1].key, "id2");
  EXPECT_EQ(obj.node(props[0].node).text, obj.node(props[1].node).text);
}

TEST(JsonSchema, AdditionalPropertiesTakeOtherKeysRaw) {
  // Pydantic's Dict[str, int] beside two properties: other keys, any number of them, with integer
  // values; a property's own key is that property (once), and an escaped key is never written.
  const JsonSchema s = JsonSchema::compile(
      R"({"properties": {"name": {"type": "string"}, "n\u00e9": {"type": "null"}}, "required": ["name"],
          "additionalProperties": {"type": "integer"}})");
  EXPECT_TRUE(whole(s, R"({"name": "x"})"));
  EXPECT_TRUE(whole(s, R"({"nam": 1, "names": 2, "name": "x", "": 3, "naïve": 4})"));
  EXPECT_TRUE(whole(s, "{\"n\xc3\xa8\": 5, \"n\xc3\xa9\": null, \"name\": \"y\"}"));  // è free, é the property
  EXPECT_FALSE(whole(s, R"({"nam": "x", "name": "x"})"));     // a free key's value is an integer
  EXPECT_FALSE(whole(s, R"({"name": "x", "name": "y"})"));    // a property once
  EXPECT_FALSE(whole(s, R"({"other": 1})"));                  // name is required
  EXPECT_EQ(first_refused(s, R"({"a\u0062": 1)"), 3);           // free keys are written raw
  EXPECT_EQ(first_refused(s, R"({"name": "x", "name")"), 19);  // the closing quote of a seen property's key
  const JsonSchema any = JsonSchema::compile(R"({"type": "object", "additionalProperties": true})");
  EXPECT_TRUE(whole(any, R"({"a": [1, {"b": null}], "c": "d"})"));
  EXPECT_TRUE(whole(any, "{}"));
}

TEST(JsonSchema, BoundedIntegersAreWrittenInRange) {
  const JsonSchema s = JsonSchema::compile(R"({"type": "integer", "minimum": -12, "exclusiveMaximum": 103.5})");
  for (int v = -30; v <= 130; ++v) EXPECT_EQ(whole(s, std::to_string(v)), v >= -12 && v <= 103) << v;
  EXPECT_FALSE(whole(s, "-0"));   // as JSON writes 0: "0"
  EXPECT_FALSE(whole(s, "007"));
  EXPECT_FALSE(whole(s, "1.0"));
  EXPECT_EQ(first_refused(s, "104"), 2);
  EXPECT_EQ(first_refused(s, "-2"), -1);   // -2 or the start of -12
  const JsonSchema open = JsonSchema::compile(R"({"properties": {"n": {"exclusiveMinimum": 99}}, "required": ["n"]})");
  EXPECT_TRUE(whole(open, R"({"n": 100})"));
  EXPECT_TRUE(whole(open, R"({"n": 123456789012})"));
  EXPECT_FALSE(whole(open, R"({"n": 99})"));
  EXPECT_EQ(first_refused(open, R"({"n": -1)"), 6);
  const JsonSchema neg = JsonSchema::compile(R"({"type": ["integer", "null"], "maximum": -7})");
  EXPECT_TRUE(whole(neg, "-7"));
  EXPECT_TRUE(whole(neg, "-1000"));
  EXPECT_TRUE(whole(neg, "null"));
  EXPECT_FALSE(whole(neg, "-6"));
  EXPECT_EQ(first_refused(neg, "0"), 0);
}

TEST(JsonSchema, BoundedNumbersAreWrittenInRange) {
  // Decimals without exponent, at most 6 fraction digits: compared exactly with the bounds' shortest
  // texts (0.1 is one tenth, not its double).
  const JsonSchema unit = JsonSchema::compile(R"({"type": "number", "minimum": 0, "exclusiveMaximum": 1})");
  for (const char* yes : {"0", "0.5", "0.999999", "0.000001", "0.10", "0.0"}) EXPECT_TRUE(whole(unit, yes)) << yes;
  for (const char* no : {"1", "1.0", "-0.5", "-0", "-0.0", "0.9999999", "1e-3", "00.5", "0."}) {
    EXPECT_FALSE(whole(unit, no)) << no;
  }
  const JsonSchema tenths = JsonSchema::compile(R"({"type": ["number", "null"], "exclusiveMinimum": -0.1, "maximum": 0.3})");
  for (const char* yes : {"-0.09", "-0.099999", "0", "0.3", "0.300000", "0.2999", "null"}) EXPECT_TRUE(whole(tenths, yes)) << yes;
  for (const char* no : {"-0.1", "-0.100000", "-1", "0.300001", "0.31"}) EXPECT_FALSE(whole(tenths, no)) << no;
  const JsonSchema big = JsonSchema::compile(R"({"type": "number", "minimum": -2.5e3})");
  EXPECT_TRUE(whole(big, "-2500"));
  EXPECT_TRUE(whole(big, "-2499.5"));
  EXPECT_TRUE(whole(big, "999999999.5"));
  EXPECT_FALSE(whole(big, "1000000000"));  // at most 9 integer digits
  EXPECT_FALSE(whole(big, "-2500.01"));
}

// From every prefix a random walk reaches, some byte continues or the text is whole: a string rule
// never strands the recognizer (the automaton is trimmed and holds only characters written without
// \u escapes).
TEST(JsonSchema, StringRulesNeverStrandAText) {
  const std::vector<std::string> schemas{
      R"({"type": "string", "pattern": "^(\\d{3}|[a-f]+x)$", "maxLength": 4})",
      R"({"type": "string", "format": "email", "maxLength": 12})",
      R"({"type": "string", "pattern": "[\u0001-\u0003]|\\n\"", "minLength": 2})",
      R"({"type": "array", "items": {"type": "string", "format": "time"}, "maxItems": 2})",
      R"({"type": "array", "items": {"type": "integer", "minimum": 95, "maximum": 1005}, "maxItems": 3})",
      R"({"type": "integer", "minimum": -40, "maximum": -3})",
      R"({"type": "number", "exclusiveMinimum": -1.25, "maximum": 0.5})",
      R"({"properties": {"ab": {"type": "null"}, "\u00e9\u00e8": {"type": "null"}},
          "additionalProperties": {"type": "integer", "maximum": 3}, "maxItems": 1})",
  };
  std::mt19937 rng(11);
  for (const std::string& text : schemas) {
    const JsonSchema s = JsonSchema::compile(text);
    for (int walk = 0; walk < 200; ++walk) {
      JsonPrefix p(s);
      for (int step = 0; step < 80 && !p.done(); ++step) {
        std::vector<uint8_t> next;
        for (int b = 0; b < 256; ++b) {
          if (JsonPrefix(p).push(static_cast<uint8_t>(b))) next.push_back(static_cast<uint8_t>(b));
        }
        ASSERT_TRUE(!next.empty() || p.complete()) << text << " walk " << walk << " step " << step;
        if (next.empty()) break;
        ASSERT_TRUE(p.push(next[std::uniform_int_distribution<size_t>(0, next.size() - 1)(rng)]));
      }
    }
  }
}

}  // namespace
}  // namespace sparseserve

namespace sparseserve {
namespace {

// The second review's cases (session 22).
TEST(JsonSchema, FreeKeysPartFromPropertyKeysOnlyBetweenWholeCharacters) {
  const JsonSchema esc = JsonSchema::compile(R"({"properties": {"a\nb": {}}, "additionalProperties": true})");
  EXPECT_NE(first_refused(esc, R"({"a\z": 1})"), -1);  // inside the property key's escape \n
  EXPECT_FALSE(whole(esc, R"({"a\": 1})"));
  EXPECT_TRUE(whole(esc, R"({"a\nc": 1, "ab": 2})"));   // after a whole escape, or before it
  const JsonSchema slash = JsonSchema::compile(
      R"({"properties": {"x\"": {"type": "integer"}, "x/": {"type": "integer"}}, "additionalProperties": {"type": "string"}})");
  EXPECT_FALSE(whole(slash, R"({"x\/": "s"})"));  // "x/" in disguise
  const JsonSchema utf8 = JsonSchema::compile("{\"properties\": {\"\xc3\xa9\": {}}, \"additionalProperties\": true}");
  EXPECT_FALSE(whole(utf8, "{\"\xc3\": 1}"));        // a key ending inside a character
  EXPECT_TRUE(whole(utf8, "{\"\xc3\xa8\": 1, \"\xc3\xa9\": 2}"));
  // Free keys are not tracked: one may repeat (JSON allows it; readers keep the last).
  EXPECT_TRUE(whole(utf8, R"({"k": 1, "k": 2})"));
}

TEST(JsonSchema, BoundsReadAsTheirShortestTextAndFarBoundsAllowNoWrittenNumber) {
  const JsonSchema above = JsonSchema::compile(R"({"type": "number", "exclusiveMinimum": 0.002877})");
  EXPECT_FALSE(whole(above, "0.002877"));
  EXPECT_TRUE(whole(above, "0.002878"));
  const JsonSchema at = JsonSchema::compile(R"({"type": "number", "minimum": 2.432199, "maximum": 2.432199})");
  EXPECT_TRUE(whole(at, "2.432199"));
  for (const char* far : {R"({"type": "number", "maximum": -1e13})", R"({"type": "number", "minimum": 1e13})",
                          R"({"type": "number", "exclusiveMinimum": 1e15})"}) {
    EXPECT_THAT(refusal(far), HasSubstr("allow no number written with at most 9 integer")) << far;
  }
  const JsonSchema wide = JsonSchema::compile(R"({"type": "number", "minimum": -1e15, "maximum": 1e15})");
  EXPECT_TRUE(whole(wide, "-999999999.5"));
  EXPECT_FALSE(whole(wide, "1000000000"));
}

TEST(JsonSchema, SchemaPatternsKeepNegatedClassesToAscii) {
  // Validators read \W \D \S by their own Unicode tables: beyond ASCII only what all of them agree on.
  const JsonSchema w = JsonSchema::compile(R"({"type": "string", "pattern": "^\\W[^\\s]$"})");
  EXPECT_TRUE(whole(w, R"("!x")"));
  EXPECT_FALSE(whole(w, "\"\xc3\xa9x\""));
  EXPECT_FALSE(whole(w, "\"!\xe2\x80\x83\""));   // U+2003, a space to Python
  const JsonSchema plain = JsonSchema::compile(R"({"type": "string", "pattern": "^[^a]$"})");
  EXPECT_TRUE(whole(plain, "\"\xc3\xa9\""));     // a negated class without \d \w \s: all of Unicode
  // '.' as ECMAScript reads it (JSON Schema's dialect): not \r, U+2028, U+2029 (Python takes them).
  const JsonSchema dot = JsonSchema::compile(R"({"type": "string", "pattern": "^a.b$"})");
  EXPECT_TRUE(whole(dot, R"("a-b")"));
  EXPECT_FALSE(whole(dot, R"("a\rb")"));
  EXPECT_FALSE(whole(dot, "\"a\xe2\x80\xa8" "b\""));
  EXPECT_FALSE(whole(dot, "\"a\xe2\x80\xa9" "b\""));
  // What the two read apart is refused: "{,2}" (a quantifier to Python, text to ECMAScript), a class
  // starting with ']' (ECMAScript's "[]" is empty).
  EXPECT_THAT(refusal(R"({"type": "string", "pattern": "^x{,2}$"})"), HasSubstr("{0,m}"));
  EXPECT_THAT(refusal(R"({"type": "string", "pattern": "^[]a]$"})"), HasSubstr("escape it"));
  EXPECT_EQ(refusal(R"({"type": "string", "pattern": "^x{0,2}[\\]a]$"})"), "");
  const JsonSchema t = JsonSchema::compile(R"({"type": "string", "format": "date-time"})");
  EXPECT_TRUE(whole(t, R"("2024-01-31T23:59:59Z")"));
  EXPECT_FALSE(whole(t, R"("2024-01-31t23:59:59z")"));  // upper case, as every ISO 8601 reader takes
}

}  // namespace
}  // namespace sparseserve

namespace sparseserve {
namespace {

// anyOf / oneOf alternatives that begin alike are followed side by side (JsonText).
TEST(JsonSchema, AlternativesThatBeginAlikeAreFollowedSideBySide) {
  // A tagged union (Pydantic's discriminated unions, tool calls): objects told apart by a const.
  const JsonSchema pets = JsonSchema::compile(R"({"discriminator": {"propertyName": "kind"}, "oneOf": [
      {"type": "object", "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer", "maximum": 9}},
       "required": ["kind", "lives"]},
      {"type": "object", "properties": {"kind": {"const": "dog"}, "good": {"type": "boolean"}},
       "required": ["kind", "good"]}]})");
  EXPECT_TRUE(whole(pets, R"({"kind": "cat", "lives": 7})"));
  EXPECT_TRUE(whole(pets, R"({"good": true, "kind": "dog"})"));  // the tag may come last
  EXPECT_EQ(first_refused(pets, R"({"kind": "cat", "good": true})"), 17);  // a cat has no "good"
  EXPECT_EQ(first_refused(pets, R"({"kind": "dog", "good": true, "lives": 1})"), 28);  // a dog has no more keys
  EXPECT_FALSE(whole(pets, R"({"lives": 7})"));  // no tag: not whole
  EXPECT_EQ(first_refused(pets, R"({"lives": 10})"), 11);  // over the cat's maximum, and no dog has lives
  // Scalars that begin alike, nested anyOf flattened.
  const JsonSchema nums = JsonSchema::compile(
      R"({"anyOf": [{"type": "integer", "minimum": 10, "maximum": 19}, {"anyOf": [{"enum": [1, 2.5]}, {"type": "string"}]}]})");
  for (const char* ok : {"12", "1", "2.5", R"("x")"}) EXPECT_TRUE(whole(nums, ok)) << ok;
  for (const char* bad : {"2", "20", "1.5", "true"}) EXPECT_FALSE(whole(nums, bad)) << bad;
  JsonText one(JsonPrefix{nums});
  ASSERT_TRUE(one.push("1"));
  EXPECT_EQ(one.states(), 2u);  // "1" (the enum) or the start of 10..19
  EXPECT_TRUE(one.complete());
  ASSERT_TRUE(one.push("5"));
  EXPECT_EQ(one.states(), 1u);
}

// From every prefix a random walk reaches under overlapping alternatives, some byte continues or the
// text is whole, and every text the walk completes is whole for the schema's own alternatives.
TEST(JsonSchema, OverlappingAlternativesNeverStrandAText) {
  const std::vector<std::string> schemas{
      R"({"type": "array", "maxItems": 3, "items": {"anyOf": [
          {"type": "object", "properties": {"name": {"const": "a"}, "parameters": {"type": "object",
              "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["x"]}}, "required": ["name", "parameters"]},
          {"type": "object", "properties": {"name": {"const": "ab"}, "parameters": {"type": "object",
              "properties": {"x": {"type": "string", "maxLength": 3}}, "required": ["x"]}}, "required": ["name", "parameters"]},
          {"type": "object", "properties": {"name": {"enum": ["a", "b"]}, "y": {"type": "null"}}, "required": ["y"]}]}})",
      R"({"anyOf": [{"type": "integer", "maximum": 120}, {"type": "number", "minimum": 0.5, "maximum": 3}, {"enum": [7, "7"]},
          {"type": "string", "pattern": "^[0-9]{2}$"}, {"type": "string", "format": "date"}]})",
  };
  std::mt19937 rng(5);
  for (const std::string& text : schemas) {
    const JsonSchema s = JsonSchema::compile(text);
    for (int walk = 0; walk < 150; ++walk) {
      JsonText p(JsonPrefix(s, 4));
      for (int step = 0; step < 120 && !p.done(); ++step) {
        std::vector<uint8_t> next;
        for (int b = 0; b < 256; ++b) {
          const char c = static_cast<char>(b);
          if (p.accepts(std::string_view(&c, 1))) next.push_back(static_cast<uint8_t>(b));
        }
        ASSERT_TRUE(!next.empty() || p.complete()) << text << " walk " << walk << " step " << step;
        if (next.empty()) break;
        const char c = static_cast<char>(next[std::uniform_int_distribution<size_t>(0, next.size() - 1)(rng)]);
        ASSERT_TRUE(p.push(std::string_view(&c, 1)));
        ASSERT_LE(p.states(), JsonText::kMaxStates);
      }
    }
  }
}

}  // namespace
}  // namespace sparseserve

namespace sparseserve {
namespace {

// The second review's cases (session 23): copies that parse alike merge, the first alternatives are
// kept, and the walk stays bounded where values fork inside values.
TEST(JsonSchema, CopiesThatParseAlikeMergeAndTheFirstAlternativesStay) {
  // int | number items: "1" forks two ways, and once the item has ended the two copies are one.
  const JsonSchema nums = JsonSchema::compile(
      R"({"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "number"}]}})");
  JsonText list(JsonPrefix{nums});
  ASSERT_TRUE(list.push("["));
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(list.push(i ? "," : "")) << i;
    for (char c : std::string("12")) ASSERT_TRUE(list.push(std::string_view(&c, 1))) << i;
    EXPECT_LE(list.states(), 2u) << i;
  }
  ASSERT_TRUE(list.push(", 2.5]"));
  EXPECT_TRUE(list.complete());
  // 64 tagged alternatives that begin alike (as many as JsonText keeps): each is followed, byte by
  // byte, until its tag decides, the first and the last included.
  std::string tools = R"({"type": "array", "items": {"anyOf": [)";
  for (int i = 0; i < 64; ++i) {
    tools += (i ? ", " : "") + std::string(R"({"type": "object", "properties": {"name": {"const": "f)") +
             std::to_string(i) + R"("}, "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}, "required": ["name", "parameters"]})";
  }
  const JsonSchema calls = JsonSchema::compile(tools + "]}}");
  for (int i : {0, 1, 17, 63}) {
    JsonText t(JsonPrefix{calls});
    const std::string text = R"([{"name": "f)" + std::to_string(i) + R"(", "parameters": {"q": "x"}}])";
    for (char c : text) ASSERT_TRUE(t.push(std::string_view(&c, 1))) << i << ": " << text;
    EXPECT_TRUE(t.complete()) << i;
  }
  // Values that fork inside values that fork (recursive arrays of 16 overlapping kinds): the walk is
  // breadth-first over merged copies, so a deep text that fails late is refused at once.
  std::string deep = R"({"anyOf": [{"type": "integer"})";
  for (int i = 1; i <= 16; ++i) deep += R"(, {"type": "array", "maxItems": )" + std::to_string(i) + R"(, "items": {"$ref": "#"}})";
  const JsonSchema rec = JsonSchema::compile(deep + "]}");
  JsonText r(JsonPrefix{rec});
  const std::string opens(24, '[');
  EXPECT_TRUE(r.accepts(opens));
  ASSERT_TRUE(r.push(opens));
  EXPECT_LE(r.states(), JsonText::kMaxStates);
  EXPECT_FALSE(r.accepts("[[[[x"));
  EXPECT_TRUE(r.accepts("1]]"));
  // The third review's cases: 33 tools whose argument is int | number (66 copies while "1" is
  // read), the last one written with its name last; a recursive union of three kinds; accepts and
  // push agree.
  std::string many = R"({"type": "array", "items": {"anyOf": [)";
  for (int i = 0; i < 33; ++i) {
    many += (i ? ", " : "") + std::string(R"({"type": "object", "properties": {"name": {"const": "t)") + std::to_string(i) +
            R"("}, "arguments": {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer"}, {"type": "number"}]}}, "required": ["v"]}}, "required": ["name", "arguments"]})";
  }
  const JsonSchema tools33 = JsonSchema::compile(many + "]}}");
  JsonText t33(JsonPrefix{tools33});
  for (char c : std::string(R"([{"arguments": {"v": 1}, "name": "t32"}])")) {
    ASSERT_EQ(t33.accepts(std::string_view(&c, 1)), true) << c;
    ASSERT_TRUE(t33.push(std::string_view(&c, 1))) << c;
  }
  EXPECT_TRUE(t33.complete());
  const JsonSchema three = JsonSchema::compile(
      R"({"anyOf": [{"type": "integer"}, {"type": "array", "maxItems": 1, "items": {"$ref": "#"}}, {"type": "array", "maxItems": 2, "items": {"$ref": "#"}}]})");
  JsonText t3(JsonPrefix{three});
  for (char c : std::string("[[[[[[[1]]]]]],1]")) ASSERT_TRUE(t3.push(std::string_view(&c, 1))) << c;
  EXPECT_TRUE(t3.complete());
}

}  // namespace
}  // namespace sparseserve
