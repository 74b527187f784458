// Regexes (engine/regex_parse.h syntax) for JSON Schema's value rules, which engine/json_schema.cc
// compiles into the automata JsonPrefix follows: the string formats, and the JSON texts of the
// numbers between two bounds. Bounds are exact decimals, so 0.1 is one tenth, not its double.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sparseserve {

// The regex of a whole string of a "format": "date", "time", "date-time" (RFC 3339 with real month
// lengths and leap years, no leap second, upper-case T and Z as every ISO 8601 reader takes them),
// "uuid" (RFC 4122), "ipv4" (dotted quad without leading zeros), "email" (one '@' and a dotted
// domain); nullptr for another name.
const std::string* format_regex(std::string_view format);

// A bound: its exact value, digits × 10^exponent, and whether it is exclusive.
struct DecimalBound {
  int64_t digits = 0;
  int32_t exponent = 0;
  bool exclusive = false;
  static DecimalBound of(int64_t v, bool exclusive);
  // v finite, |v| ≤ 10^15; read from the shortest text that reads back as v.
  static DecimalBound of(double v, bool exclusive);
};
// The tighter of two lower (lower = true) or two upper bounds, as texts written below can tell.
DecimalBound tighter(const DecimalBound& a, const DecimalBound& b, bool lower);

// The JSON texts of the integers within the bounds (an absent bound: none on that side; values of
// any size), or "" when there is none.
std::string integer_texts(const std::optional<DecimalBound>& lo, const std::optional<DecimalBound>& hi);

// The "number" texts within the bounds as constrained decoding writes them: no exponent, at most
// kBoundedFraction fraction and kBoundedIntegerDigits integer digits (so at most 15 significant
// digits, and comparing a text's exact value with a bound's gives what comparing their doubles
// gives), no "-0"; "" when there is none.
inline constexpr int kBoundedFraction = 6, kBoundedIntegerDigits = 9;
std::string number_texts(const std::optional<DecimalBound>& lo, const std::optional<DecimalBound>& hi);

}  // namespace sparseserve
