// python_dumps against what Python's json.dumps(json.loads(text)) writes (each expected string was
// printed by CPython 3.11); tests/python/test_http_tools.py checks random doubles through the server.
#include "engine/python_json.h"

#include <gtest/gtest.h>

#include <string>

namespace sparseserve {
namespace {

std::string dumps(std::string_view text, int indent = -1) { return python_dumps(text, indent).value_or("<not JSON>"); }

TEST(PythonDumps, FloatsAsPythonsRepr) {
  // Positional from 1e-4 up to 1e16 (exclusive), ".0" on integral values; exponents of two digits.
  EXPECT_EQ(dumps("[1e15, 1e16, 1.5e16, 1E-4, 0.00001, -0.0, 1e-7, 100.0, 2.5, -1e22]"),
            "[1000000000000000.0, 1e+16, 1.5e+16, 0.0001, 1e-05, -0.0, 1e-07, 100.0, 2.5, -1e+22]");
  // The shortest digits that read back, correctly rounded (Grisu2 missed these).
  EXPECT_EQ(dumps("[1234567890123456.7, 128305716732583.88, 887357630251693.25]"),
            "[1234567890123456.8, 128305716732583.88, 887357630251693.2]");
  EXPECT_EQ(dumps("[5e-324, 1.7976931348623157e308, 123.456]"), "[5e-324, 1.7976931348623157e+308, 123.456]");
}

TEST(PythonDumps, IntegersKeepTheirDigits) {
  EXPECT_EQ(dumps("{\"n\":123456789012345678901234567890,\"m\":-9223372036854775809,\"k\":-0}"),
            "{\"n\": 123456789012345678901234567890, \"m\": -9223372036854775809, \"k\": 0}");
}

TEST(PythonDumps, ARepeatedKeyKeepsItsFirstPlaceAndLastValue) {
  EXPECT_EQ(dumps("{\"a\":1,\"b\":[1,{\"c\":2,\"c\":3}],\"a\":{\"x\":[]}}"), "{\"a\": {\"x\": []}, \"b\": [1, {\"c\": 3}]}");
  EXPECT_EQ(dumps("{\"a\":1,\"b\":[1,{\"c\":2,\"c\":3}],\"a\":{\"x\":[]}}", 2),
            "{\n  \"a\": {\n    \"x\": []\n  },\n  \"b\": [\n    1,\n    {\n      \"c\": 3\n    }\n  ]\n}");
}

TEST(PythonDumps, StringsAndLayout) {
  EXPECT_EQ(dumps(" {\"s\" : \"S\\u00e3o \\\"P\\\"\\n\", \"e\": {}, \"l\": [ ]} "), "{\"s\": \"São \\\"P\\\"\\n\", \"e\": {}, \"l\": []}");
  EXPECT_EQ(dumps("\"x\""), "\"x\"");
  EXPECT_EQ(dumps("[[1,2],[]]", 0), "[\n[\n1,\n2\n],\n[]\n]");
}

TEST(PythonDumps, NotJsonOrTooDeepIsNullopt) {
  EXPECT_FALSE(python_dumps("{\"a\":").has_value());
  EXPECT_FALSE(python_dumps("[1] x").has_value());
  EXPECT_FALSE(python_dumps(std::string(300, '[') + std::string(300, ']')).has_value());
  EXPECT_TRUE(python_dumps(std::string(200, '[') + std::string(200, ']')).has_value());
}

}  // namespace
}  // namespace sparseserve
