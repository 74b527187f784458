#include "engine/json_schema.h"

#include <algorithm>
#include <bitset>
#include <charconv>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>

#include "common/errors.h"
#include "engine/regex_dfa.h"

namespace sparseserve {

namespace {

using nlohmann::json;

constexpr int32_t kMaxNesting = 64;     // schema levels below the root
constexpr int32_t kMaxTextDepth = 256;  // JSON nesting of the schema's text
constexpr size_t kMaxNodes = 4096;      // schemas (nodes) in one compiled schema

const std::set<std::string, std::less<>> kAnnotations = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
    "writeOnly", "$defs", "definitions"};
const std::set<std::string, std::less<>> kKeywords = {
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "$ref", "pattern", "format", "minLength", "maxLength",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"};
constexpr size_t kMaxTextRules = 16;  // distinct pattern / format / length rules in one schema (each
                                      // compile is bounded by RegexDfa's limits; 16 bound the sum)

// "format" values as regexes over the whole string (RFC 3339 dates and times with real month
// lengths and leap years, no leap second, upper-case T and Z as every ISO 8601 reader takes them; RFC 4122 UUIDs; dotted-quad IPv4 without leading zeros; an
// address with one '@' and a dotted domain).
const std::map<std::string, std::string, std::less<>> kFormats = [] {
  const std::string year = R"((\d{3}[1-9]|\d\d[1-9]\d|\d[1-9]\d\d|[1-9]\d{3}))";
  const std::string leap = R"((\d\d(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00))";
  const std::string date = "(" + year + R"(-((0[13578]|1[02])-(0[1-9]|[12]\d|3[01])|(0[469]|11)-(0[1-9]|[12]\d|30)|02-(0[1-9]|1\d|2[0-8]))|)" +
                           leap + "-02-29)";
  const std::string time = R"(([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))";
  const std::string octet = R"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))";
  return std::map<std::string, std::string, std::less<>>{
      {"date", date},
      {"time", time},
      {"date-time", date + "T" + time},
      {"uuid", R"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"},
      {"ipv4", "(" + octet + R"(\.){3})" + octet},
      {"email", R"([A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})"},
  };
}();

uint8_t type_bit(const json& name, const std::string& at) {
  if (!name.is_string()) throw InvalidArgument("json_schema: 'type' must be a name or a list of names (at " + at + ")");
  const std::string& n = name.get_ref<const std::string&>();
  if (n == "object") return JsonSchema::kObject;
  if (n == "array") return JsonSchema::kArray;
  if (n == "string") return JsonSchema::kString;
  if (n == "integer") return JsonSchema::kInteger;
  if (n == "number") return JsonSchema::kNumber;
  if (n == "boolean") return JsonSchema::kBoolean;
  if (n == "null") return JsonSchema::kNull;
  throw InvalidArgument("json_schema: unknown type '" + n + "' (at " + at + ")");
}

uint8_t type_of(const json& v) {
  switch (v.type()) {
    case json::value_t::object: return JsonSchema::kObject;
    case json::value_t::array: return JsonSchema::kArray;
    case json::value_t::string: return JsonSchema::kString;
    case json::value_t::boolean: return JsonSchema::kBoolean;
    case json::value_t::null: return JsonSchema::kNull;
    case json::value_t::number_float: return JsonSchema::kNumber;
    default: return JsonSchema::kInteger | JsonSchema::kNumber;  // integers
  }
}

uint32_t item_count(const json& v, const char* key, const std::string& at) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > UINT32_MAX - 1) {
    throw InvalidArgument(std::string("json_schema: '") + key + "' must be a non-negative integer (at " + at + ")");
  }
  return static_cast<uint32_t>(v.get<int64_t>());
}

// The bytes a value of each kind may begin with.
std::bitset<256> first_bytes_of_types(uint8_t types) {
  std::bitset<256> f;
  if (types & JsonSchema::kObject) f.set('{');
  if (types & JsonSchema::kArray) f.set('[');
  if (types & JsonSchema::kString) f.set('"');
  if (types & (JsonSchema::kInteger | JsonSchema::kNumber)) {
    f.set('-');
    for (char c = '0'; c <= '9'; ++c) f.set(static_cast<uint8_t>(c));
  }
  if (types & JsonSchema::kBoolean) f.set('t').set('f');
  if (types & JsonSchema::kNull) f.set('n');
  return f;
}

// Digit strings of one length from x to y (x ≤ y as numbers), as a regex: the first digit's
// branches at most once each way, so the size is linear in the length.
std::string same_length_range(const std::string& x, const std::string& y) {
  const size_t n = x.size(), rest = n - 1;
  const auto all = [](std::string_view t, char c) { return t.find_first_not_of(c) == std::string_view::npos; };
  const std::string any = rest == 0 ? "" : "\\d{" + std::to_string(rest) + "}";
  if (x == y) return x;
  if (n == 1 || (all(x.substr(1), '0') && all(y.substr(1), '9'))) {
    return std::string("[") + x[0] + "-" + y[0] + "]" + any;
  }
  if (x[0] == y[0]) return x.substr(0, 1) + "(" + same_length_range(x.substr(1), y.substr(1)) + ")";
  std::vector<std::string> parts;
  char lo = x[0], hi = y[0];
  if (!all(x.substr(1), '0')) {  // x's first digit with the rest from x's up
    parts.push_back(x.substr(0, 1) + "(" + same_length_range(x.substr(1), std::string(rest, '9')) + ")");
    ++lo;
  }
  std::string last;
  if (!all(y.substr(1), '9')) {  // y's first digit with the rest up to y's
    last = y.substr(0, 1) + "(" + same_length_range(std::string(rest, '0'), y.substr(1)) + ")";
    --hi;
  }
  if (lo <= hi) parts.push_back(std::string("[") + lo + "-" + hi + "]" + any);
  if (!last.empty()) parts.push_back(last);
  std::string r;
  for (const std::string& p : parts) r += (r.empty() ? "" : "|") + p;
  return r;
}

// Non-negative integers a..b (b < 0: no end), written as JSON writes them (no leading zero).
std::string natural_range(int64_t a, int64_t b) {
  std::string r;
  const auto digits = [](int64_t v) { return static_cast<int>(std::to_string(v).size()); };
  int64_t low = 1;  // 10^(d-1)
  for (int d = 1; d < digits(a); ++d) low *= 10;
  for (int d = digits(a); b < 0 ? d == digits(a) : d <= digits(b); ++d, low *= 10) {
    const int64_t x = std::max(a, d == 1 ? int64_t{0} : low), y = b < 0 ? low * 10 - 1 : std::min(b, low * 10 - 1);
    if (x > y) continue;
    r += (r.empty() ? "(" : "|(") + same_length_range(std::to_string(x), std::to_string(y)) + ")";
  }
  if (b < 0) r += "|[1-9]\\d{" + std::to_string(digits(a)) + ",}";  // every longer one
  return r;
}

// The integers from lo to hi (absent: no bound), as a regex of their JSON texts (no "-0").
std::string integer_range(std::optional<int64_t> lo, std::optional<int64_t> hi) {
  std::vector<std::string> alts;
  if (!hi || *hi >= 0) alts.push_back(natural_range(lo && *lo > 0 ? *lo : 0, hi ? *hi : -1));
  if (!lo || *lo < 0) alts.push_back("-(" + natural_range(hi && *hi < 0 ? -*hi : 1, lo ? -*lo : -1) + ")");
  std::string r;
  for (const std::string& a : alts) r += (r.empty() ? "(" : "|(") + a + ")";
  return r;
}

// A bound's exact decimal value, digits × 10^exponent (read from the shortest text of the number,
// so 0.1 is 1 × 10^-1, not the binary double's expansion), and whether it is exclusive.
struct Bound {
  int64_t digits = 0;
  int32_t exponent = 0;
  bool exclusive = false;
};

// v: a number of size at most 10^15 (checked by the caller).
Bound bound_of(const json& v, bool exclusive) {
  Bound b{0, 0, exclusive};
  if (v.is_number_integer()) {
    b.digits = v.get<int64_t>();
    return b;
  }
  char buf[64];  // std::to_chars: the shortest text that reads back as the double (dump() may be longer)
  const std::string t(buf, std::to_chars(buf, buf + sizeof buf, v.get<double>()).ptr);  // "-0.3", "1e-07"
  size_t i = t[0] == '-' ? 1 : 0;
  int32_t fraction = 0;
  bool dot = false;
  for (; i < t.size() && t[i] != 'e' && t[i] != 'E'; ++i) {
    if (t[i] == '.') {
      dot = true;
    } else if (b.digits < INT64_MAX / 10) {  // the shortest text has at most 17 significant digits
      b.digits = b.digits * 10 + (t[i] - '0');
      fraction += dot ? 1 : 0;
    } else {
      fraction -= dot ? 0 : 1;  // a digit dropped before the point (not reached for these sizes)
    }
  }
  b.exponent = (i < t.size() ? std::stoi(t.substr(i + 1)) : 0) - fraction;
  if (t[0] == '-') b.digits = -b.digits;
  return b;
}

__extension__ typedef __int128 Int128;  // 10^15 bounds on a 10^-7 grid, and 17-digit mantissas

// The least (lower) or greatest (upper) integer n with n × 10^-f inside the bound (|bound| ≤ 10^15,
// f ≤ 7: |n| ≤ 10^22).
Int128 scaled_limit(const Bound& b, int f, bool lower) {
  const int32_t e = b.exponent + f;
  Int128 floor = 0;
  bool exact = true;
  if (e >= 0) {
    floor = b.digits;
    for (int32_t k = 0; k < e; ++k) floor *= 10;
  } else if (e < -18) {
    floor = b.digits < 0 ? -1 : 0;
    exact = b.digits == 0;
  } else {
    int64_t div = 1;
    for (int32_t k = 0; k < -e; ++k) div *= 10;
    floor = b.digits / div;
    const int64_t r = b.digits % div;
    if (r < 0) --floor;
    exact = r == 0;
  }
  if (lower) return exact && !b.exclusive ? floor : floor + 1;
  return exact && b.exclusive ? floor - 1 : floor;
}

// Non-negative numbers with exactly f fraction digits whose value × 10^f is in a..b (0 ≤ a ≤ b).
std::string fixed_point_range(int64_t a, int64_t b, int f) {
  if (f == 0) return natural_range(a, b);
  int64_t p = 1;
  for (int k = 0; k < f; ++k) p *= 10;
  const auto pad = [&](int64_t r) {
    const std::string t = std::to_string(r);
    return std::string(static_cast<size_t>(f) - t.size(), '0') + t;
  };
  const int64_t qa = a / p, ra = a % p, qb = b / p, rb = b % p;
  if (qa == qb) return std::to_string(qa) + "\\.(" + same_length_range(pad(ra), pad(rb)) + ")";
  std::string r = std::to_string(qa) + "\\.(" + same_length_range(pad(ra), pad(p - 1)) + ")";
  if (qb - qa >= 2) r += "|(" + natural_range(qa + 1, qb - 1) + ")\\.\\d{" + std::to_string(f) + "}";
  return r + "|" + std::to_string(qb) + "\\.(" + same_length_range(pad(0), pad(rb)) + ")";
}

// "number" texts between the bounds: no exponent, at most kBoundedFraction fraction digits and
// kBoundedIntegerDigits integer digits (so at most 15 significant digits: comparing the text's
// exact value with the bound's gives what comparing their doubles gives), no "-0".
constexpr int kBoundedFraction = 6, kBoundedIntegerDigits = 9;
std::string number_range(const std::optional<Bound>& lo, const std::optional<Bound>& hi) {
  std::string r;
  int64_t cap = 1;  // 10^(integer digits + f)
  for (int k = 0; k < kBoundedIntegerDigits; ++k) cap *= 10;
  for (int f = 0; f <= kBoundedFraction; ++f, cap *= 10) {
    // Clamped to the written range on both sides before narrowing (a bound may be ~10^21 here).
    const auto clamp = [&](Int128 v) { return static_cast<int64_t>(std::clamp<Int128>(v, -cap, cap)); };
    const int64_t least = std::max(lo ? clamp(scaled_limit(*lo, f, true)) : -(cap - 1), -(cap - 1));
    const int64_t most = std::min(hi ? clamp(scaled_limit(*hi, f, false)) : cap - 1, cap - 1);
    if (least > most) continue;
    if (most >= 0) r += (r.empty() ? "(" : "|(") + fixed_point_range(std::max<int64_t>(least, 0), most, f) + ")";
    if (least < 0) {  // -m for m in max(1, -most) .. -least
      r += (r.empty() ? "-(" : "|-(") + fixed_point_range(std::max<int64_t>(1, -most), -least, f) + ")";
    }
  }
  return r;
}

}  // namespace

class JsonSchemaCompiler {
 public:
  explicit JsonSchemaCompiler(const json& root) : root_(root) {}

  JsonSchema run() {
    out_.root_ = compile(root_, "#", 0, "#");
    first_bytes();
    min_depths();
    return std::move(out_);
  }

 private:
  // A new node; `target` (a $ref target it is, or "") finds it again, so a schema can refer to
  // itself through it.
  int32_t add(const std::string& target) {
    if (out_.nodes_.size() >= kMaxNodes) throw InvalidArgument("json_schema: more than 4096 schemas in all");
    out_.nodes_.emplace_back();
    const auto id = static_cast<int32_t>(out_.nodes_.size()) - 1;
    if (!target.empty()) made_.emplace(target, id);
    for (const std::string& a : aliases_) made_.emplace(a, id);
    aliases_.clear();
    return id;
  }
  JsonSchema::Node& node(int32_t id) { return out_.nodes_[static_cast<size_t>(id)]; }

  int32_t compile(const json& s, const std::string& at, int32_t level, const std::string& target = "") {
    if (level > kMaxNesting) throw InvalidArgument("json_schema: nested more than 64 levels deep (at " + at + ")");
    if (s.is_boolean()) {
      if (!s.get<bool>()) throw InvalidArgument("json_schema: the schema false allows no value (at " + at + ")");
      const int32_t id = add(target);
      node(id).any = true;
      return id;
    }
    if (!s.is_object()) throw InvalidArgument("json_schema: a schema must be an object or a boolean (at " + at + ")");
    for (const auto& [key, value] : s.items()) {
      if (!kAnnotations.contains(key) && !kKeywords.contains(key)) {
        throw InvalidArgument("json_schema: keyword '" + key + "' is not supported (at " + at + ")");
      }
    }
    const auto has = [&](const char* k) { return s.contains(k); };
    const auto others = [&](std::initializer_list<const char*> allowed) {
      for (const auto& [key, value] : s.items()) {
        if (kKeywords.contains(key) && std::none_of(allowed.begin(), allowed.end(), [&](const char* a) { return key == a; })) {
          return key;
        }
      }
      return std::string();
    };
    if (has("$ref")) {
      if (const std::string k = others({"$ref"}); !k.empty()) {
        throw InvalidArgument("json_schema: '$ref' beside '" + k + "' is not supported (at " + at + ")");
      }
      return ref(s["$ref"], at, level);
    }
    if (has("anyOf") || has("oneOf")) {
      const char* key = has("anyOf") ? "anyOf" : "oneOf";
      if (const std::string k = others({key}); !k.empty()) {
        throw InvalidArgument(std::string("json_schema: '") + key + "' beside '" + k + "' is not supported (at " + at + ")");
      }
      const json& alts = s[key];
      if (!alts.is_array() || alts.empty()) {
        throw InvalidArgument(std::string("json_schema: '") + key + "' must be a non-empty list (at " + at + ")");
      }
      const int32_t id = add(target);
      for (size_t i = 0; i < alts.size(); ++i) {
        const int32_t alt = compile(alts[i], at + "/" + key + "/" + std::to_string(i), level + 1);
        node(id).alternatives.push_back(alt);
      }
      return id;
    }

    const int32_t id = add(target);
    uint8_t types = 0;
    if (has("type")) {
      const json& t = s["type"];
      if (t.is_array()) {
        if (t.empty()) throw InvalidArgument("json_schema: 'type' lists no type (at " + at + ")");
        for (const json& name : t) types |= type_bit(name, at);
      } else {
        types = type_bit(t, at);
      }
    }
    if (has("enum") || has("const")) {
      if (has("enum") && has("const")) throw InvalidArgument("json_schema: both 'enum' and 'const' (at " + at + ")");
      const json values = has("const") ? json::array({s["const"]}) : s["enum"];
      if (!values.is_array() || values.empty() || values.size() > JsonSchema::kMaxLiterals) {
        throw InvalidArgument("json_schema: 'enum' must list 1 to 64 values (at " + at + ")");
      }
      std::vector<std::string> literals;
      for (const json& v : values) {
        if (v.is_number_float() && std::fabs(v.get<double>()) >= 9007199254740992.0) {  // 2^53
          throw InvalidArgument("json_schema: enum value " + v.dump() + " is too large to be matched as written (at " + at + ")");
        }
        if (types != 0 && (type_of(v) & types) == 0) {
          throw InvalidArgument("json_schema: enum value " + v.dump() + " is not of the schema's type (at " + at + ")");
        }
        std::string text = v.dump(-1, ' ', /*ensure_ascii=*/false);
        if (std::find(literals.begin(), literals.end(), text) == literals.end()) literals.push_back(std::move(text));
      }
      if (const std::string k = others({"enum", "const", "type"}); !k.empty()) {
        throw InvalidArgument("json_schema: 'enum' beside '" + k + "' is not supported (at " + at + ")");
      }
      node(id).literals = std::move(literals);
      return id;
    }
    if (types == 0) {
      if (has("properties") || has("required") || has("additionalProperties")) types |= JsonSchema::kObject;
      if (has("items") || has("minItems") || has("maxItems")) types |= JsonSchema::kArray;
      if (has("pattern") || has("format") || has("minLength") || has("maxLength")) types |= JsonSchema::kString;
      if (has("minimum") || has("maximum") || has("exclusiveMinimum") || has("exclusiveMaximum")) {
        types |= JsonSchema::kInteger;
      }
    }
    if (types == 0) {
      node(id).any = true;
      return id;
    }
    node(id).types = types;
    if (types & JsonSchema::kObject) object(s, id, at, level);
    if (types & JsonSchema::kArray) array(s, id, at, level);
    if (types & JsonSchema::kString) string(s, id, at);
    if (types & (JsonSchema::kInteger | JsonSchema::kNumber)) bounds(s, id, at);
    return id;
  }

  // Numbers: "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum" (at most 10^15 in size)
  // as an automaton over the value's JSON text (Node::number): an integer's without a bound on its
  // size; a "number"'s as number_range writes them.
  void bounds(const json& s, int32_t id, const std::string& at) {
    std::optional<Bound> lo, hi;
    const auto tighter = [](const Bound& a, const Bound& b, bool lower) {  // on 10^-7 steps, exact below that
      const Int128 x = scaled_limit(a, kBoundedFraction + 1, lower), y = scaled_limit(b, kBoundedFraction + 1, lower);
      return lower ? (x > y ? a : b) : (x < y ? a : b);
    };
    for (const char* key : {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"}) {
      if (!s.contains(key)) continue;
      const json& v = s[key];
      if (!v.is_number() || !(std::fabs(v.get<double>()) <= 1e15)) {
        throw InvalidArgument(std::string("json_schema: '") + key + "' must be a number of size at most 10^15 (at " + at + ")");
      }
      const std::string k = key;
      const Bound b = bound_of(v, k.starts_with("exclusive"));
      if (k == "minimum" || k == "exclusiveMinimum") {
        lo = lo ? tighter(*lo, b, true) : b;
      } else {
        hi = hi ? tighter(*hi, b, false) : b;
      }
    }
    if (!lo && !hi) return;
    std::string texts;
    if (node(id).types & JsonSchema::kNumber) {
      texts = number_range(lo, hi);
    } else {
      const auto limit = [](const std::optional<Bound>& b, bool lower) {  // |bound| ≤ 10^15: fits
        return b ? std::optional(static_cast<int64_t>(scaled_limit(*b, 0, lower))) : std::nullopt;
      };
      const std::optional<int64_t> least = limit(lo, true), most = limit(hi, false);
      if (!least || !most || *least <= *most) texts = integer_range(least, most);
    }
    if (texts.empty()) {
      throw InvalidArgument(std::string("json_schema: its bounds allow no number") +
                            (node(id).types & JsonSchema::kNumber ? " written with at most 9 integer and 6 fraction digits" : "") +
                            " (at " + at + ")");
    }
    node(id).number = std::make_shared<const RegexDfa>(RegexDfa::compile(texts));
  }

  // The string rules of s, for the cache of identical ones (Pydantic repeats them).
  static std::string key_of(const json& s) {
    std::string key;
    for (const char* k : {"pattern", "format", "minLength", "maxLength"}) key += (s.contains(k) ? s[k].dump() : "") + "\x01";
    return key;
  }

  // Strings: "pattern" (searched for, as JSON Schema's patterns are), "format" (kFormats),
  // "minLength" / "maxLength" (code points), as one automaton over the string's decoded text (Node::
  // text). It is intersected with the characters a JSON string writes without a \u escape, which
  // the recognizer then never takes in such a string.
  void string(const json& s, int32_t id, const std::string& at) {
    const bool pattern = s.contains("pattern"), format = s.contains("format");
    const bool lengths = s.contains("minLength") || s.contains("maxLength");
    if (!pattern && !format && !lengths) return;
    if (text_cache_.size() >= kMaxTextRules && !text_cache_.contains(key_of(s))) {
      throw InvalidArgument("json_schema: more than " + std::to_string(kMaxTextRules) +
                            " different string rules (pattern, format, lengths) (at " + at + ")");
    }
    const std::string key = key_of(s);
    if (const auto it = text_cache_.find(key); it != text_cache_.end()) {
      node(id).text = it->second;
      return;
    }
    const auto fail = [&](const std::string& what) { throw InvalidArgument("json_schema: " + what + " (at " + at + ")"); };
    try {
      // Raw characters and the short escapes (\b \t \n \f \r): everything but other control characters.
      RegexDfa text = RegexDfa::compile(R"([^\x00-\x07\x0b\x0e-\x1f]*)");
      if (pattern) {
        if (!s["pattern"].is_string()) fail("'pattern' must be a string");
        text = RegexDfa::intersect(text, RegexDfa::compile(s["pattern"].get<std::string>(), RegexMode::kSearch));
      }
      if (format) {
        const json& f = s["format"];
        const auto it = f.is_string() ? kFormats.find(f.get<std::string>()) : kFormats.end();
        if (it == kFormats.end()) {
          fail("'format' " + f.dump() + " is not supported (date, time, date-time, uuid, ipv4, email)");
        }
        text = RegexDfa::intersect(text, RegexDfa::compile(it->second));
      }
      if (lengths) {
        const uint32_t lo = s.contains("minLength") ? item_count(s["minLength"], "minLength", at) : 0;
        const uint32_t hi = s.contains("maxLength") ? item_count(s["maxLength"], "maxLength", at) : UINT32_MAX;
        if (lo > hi) fail("'minLength' is over 'maxLength'");
        if (lo > static_cast<uint32_t>(kMaxRepeat) || (hi != UINT32_MAX && hi > static_cast<uint32_t>(kMaxRepeat))) {
          fail("'minLength' and 'maxLength' above " + std::to_string(kMaxRepeat) + " are not supported");
        }
        const std::string count = "{" + std::to_string(lo) + "," + (hi == UINT32_MAX ? "" : std::to_string(hi)) + "}";
        text = RegexDfa::intersect(text, RegexDfa::compile(R"([\s\S])" + count));
      }
      node(id).text = text_cache_.emplace(key, std::make_shared<const RegexDfa>(std::move(text))).first->second;
    } catch (const InvalidArgument& e) {
      const std::string what = e.what();
      if (what.starts_with("json_schema:")) throw;
      fail(what == "the regex matches no text" ? "its pattern, format and lengths allow no string"
           : pattern                         ? "'pattern' (with its format and lengths): " + what
                                             : "its format and lengths: " + what);
    }
  }

  void object(const json& s, int32_t id, const std::string& at, int32_t level) {
    if (s.contains("additionalProperties")) {
      const json& a = s["additionalProperties"];
      if (!a.is_boolean() || a.get<bool>()) {
        const int32_t other = compile(a, at + "/additionalProperties", level + 1);
        node(id).additional = other;
      }
    }
    if (s.contains("properties")) {
      const json& props = s["properties"];
      if (!props.is_object()) throw InvalidArgument("json_schema: 'properties' must be an object (at " + at + ")");
      if (props.size() > static_cast<size_t>(JsonSchema::kMaxProperties)) {
        throw InvalidArgument("json_schema: more than 64 properties (at " + at + ")");
      }
      for (const auto& [name, sub] : props.items()) {
        const std::string quoted = json(name).dump(-1, ' ', /*ensure_ascii=*/false);
        const int32_t child = compile(sub, at + "/properties/" + name, level + 1);
        node(id).properties.push_back({quoted.substr(1, quoted.size() - 2), child});
      }
    }
    if (s.contains("required")) {
      const json& req = s["required"];
      if (!req.is_array()) throw InvalidArgument("json_schema: 'required' must be a list of names (at " + at + ")");
      const json props = s.value("properties", json::object());
      for (const json& name : req) {
        if (!name.is_string() || !props.contains(name.get<std::string>())) {
          throw InvalidArgument("json_schema: required " + name.dump() + " is not in 'properties' (at " + at + ")");
        }
        size_t i = 0;
        for (const auto& [key, sub] : props.items()) {
          if (key == name.get<std::string>()) break;
          ++i;
        }
        node(id).required |= uint64_t{1} << i;
      }
    }
  }

  void array(const json& s, int32_t id, const std::string& at, int32_t level) {
    if (s.contains("items")) {
      const json& items = s["items"];
      if (items.is_array()) throw InvalidArgument("json_schema: 'items' as a list is not supported (at " + at + ")");
      const int32_t child = compile(items, at + "/items", level + 1);
      node(id).items = child;
    } else {
      const int32_t any = add("");
      node(any).any = true;
      node(id).items = any;
    }
    if (s.contains("minItems")) node(id).min_items = item_count(s["minItems"], "minItems", at);
    if (s.contains("maxItems")) node(id).max_items = item_count(s["maxItems"], "maxItems", at);
    if (node(id).min_items > node(id).max_items) {
      throw InvalidArgument("json_schema: 'minItems' is over 'maxItems' (at " + at + ")");
    }
  }

  // "#", "#/$defs/NAME" or "#/definitions/NAME" (NAME with ~1 for '/' and ~0 for '~'), each compiled
  // once. A target that is itself only a $ref (an alias, as "#" of a root $ref) is followed to the
  // schema at the end of the chain, and every name on the way refers to that one node, so recursion
  // through any of them finds it whatever the compile order.
  int32_t ref(const json& value, const std::string& at, int32_t level) {
    if (!value.is_string()) throw InvalidArgument("json_schema: '$ref' must be a string (at " + at + ")");
    std::string t = value.get<std::string>();
    std::vector<std::string> aliases;  // names met on the way
    std::set<std::string> seen;
    for (;;) {
      if (const auto it = made_.find(t); it != made_.end()) {
        for (const std::string& a : aliases) made_.emplace(a, it->second);
        return it->second;
      }
      if (!seen.insert(t).second) throw InvalidArgument("json_schema: '$ref' " + t + " refers to itself (at " + at + ")");
      const json* s = t == "#" ? &root_ : target(t, at);
      const bool alias = s->is_object() && s->contains("$ref") &&
                         std::all_of(s->items().begin(), s->items().end(),
                                     [](const auto& kv) { return kv.key() == "$ref" || kAnnotations.contains(kv.key()); });
      if (!alias) {
        aliases_.insert(aliases_.end(), aliases.begin(), aliases.end());  // registered by the node's add()
        return compile(*s, t, level + 1, t);
      }
      aliases.push_back(t);
      const json& next = (*s)["$ref"];
      if (!next.is_string()) throw InvalidArgument("json_schema: '$ref' must be a string (at " + t + ")");
      t = next.get<std::string>();
    }
  }

  // The schema a "#/$defs/NAME" or "#/definitions/NAME" pointer names.
  const json* target(const std::string& t, const std::string& at) const {
    for (const std::string key : {"$defs", "definitions"}) {
      const std::string prefix = "#/" + key + "/";
      if (t.rfind(prefix, 0) != 0 || t.find('/', prefix.size()) != std::string::npos) continue;
      std::string name;
      for (size_t i = prefix.size(); i < t.size(); ++i) {
        if (t[i] == '~' && i + 1 < t.size() && (t[i + 1] == '0' || t[i + 1] == '1')) {
          name += t[++i] == '0' ? '~' : '/';
        } else {
          name += t[i];
        }
      }
      if (root_.contains(key) && root_[key].is_object() && root_[key].contains(name)) return &root_[key][name];
    }
    throw InvalidArgument("json_schema: '$ref' " + t + " is not supported or not found (only \"#\", \"#/$defs/NAME\" and "
                          "\"#/definitions/NAME\"; at " + at + ")");
  }

  // Each node's first bytes, to a fixed point (alternatives may refer back through $ref); then
  // anyOf alternatives must not share one.
  void first_bytes() {
    auto& nodes = out_.nodes_;
    std::vector<std::bitset<256>> f(nodes.size());
    // Children are made after their parents: from the back, an acyclic schema settles in one pass.
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t i = nodes.size(); i-- > 0;) {
        const JsonSchema::Node& n = nodes[i];
        std::bitset<256> b;
        if (n.any) {
          b = first_bytes_of_types(0x7f);
        } else if (!n.literals.empty()) {
          for (const std::string& l : n.literals) b.set(static_cast<uint8_t>(l[0]));
        } else if (!n.alternatives.empty()) {
          for (int32_t a : n.alternatives) b |= f[static_cast<size_t>(a)];
        } else {
          b = first_bytes_of_types(n.types);
        }
        if (b != f[i]) {
          f[i] = b;
          changed = true;
        }
      }
    }
    for (size_t i = 0; i < nodes.size(); ++i) {
      if (f[i].none()) throw InvalidArgument("json_schema: a schema allows no value (anyOf of only itself)");
    }
    for (size_t i = 0; i < nodes.size(); ++i) {
      const auto& alts = nodes[i].alternatives;
      for (size_t a = 0; a < alts.size(); ++a) {
        for (size_t b = a + 1; b < alts.size(); ++b) {
          if ((f[static_cast<size_t>(alts[a])] & f[static_cast<size_t>(alts[b])]).any()) {
            throw InvalidArgument("json_schema: anyOf alternatives " + std::to_string(a) + " and " + std::to_string(b) +
                                  " could begin with the same character; only alternatives of different kinds (an "
                                  "object, an array, a string, a number, a boolean, null) are supported");
          }
        }
      }
    }
    out_.first_.assign(f.begin(), f.end());
  }

  // Each node's least container nesting a value of it needs (JsonSchema::Node::min_depth), to a fixed
  // point from "none"; a node left at none has only values nested without end (an object that
  // requires itself) and is refused.
  void min_depths() {
    auto& nodes = out_.nodes_;
    constexpr int32_t kNone = JsonSchema::kNoDepth;
    for (JsonSchema::Node& n : nodes) n.min_depth = n.min_object_depth = n.min_array_depth = kNone;
    const auto plus_one = [](int32_t d) { return d >= kNone - 1 ? kNone : d + 1; };
    for (bool changed = true; changed;) {
      changed = false;
      for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {  // children first, as above
        JsonSchema::Node& n = *it;
        int32_t object = kNone, array = kNone, least = kNone;
        if (n.any || !n.literals.empty()) {
          least = 0;  // a scalar (any), or a literal matched as text (it opens no frame)
        } else if (!n.alternatives.empty()) {
          for (int32_t a : n.alternatives) least = std::min(least, nodes[static_cast<size_t>(a)].min_depth);
        } else {
          if (n.types & ~(JsonSchema::kObject | JsonSchema::kArray)) least = 0;
          if (n.types & JsonSchema::kObject) {
            int32_t inner = 0;
            for (size_t i = 0; i < n.properties.size(); ++i) {
              if (n.required >> i & 1) inner = std::max(inner, nodes[static_cast<size_t>(n.properties[i].node)].min_depth);
            }
            object = plus_one(inner);
          }
          if (n.types & JsonSchema::kArray) {
            array = plus_one(n.min_items > 0 ? nodes[static_cast<size_t>(n.items)].min_depth : 0);
          }
          least = std::min({least, object, array});
        }
        if (least != n.min_depth || object != n.min_object_depth || array != n.min_array_depth) {
          n.min_depth = least, n.min_object_depth = object, n.min_array_depth = array;
          changed = true;
        }
      }
    }
    for (const JsonSchema::Node& n : nodes) {
      if (n.min_depth == kNone) throw InvalidArgument("json_schema: a schema allows only values nested without end");
    }
    if (nodes[static_cast<size_t>(out_.root_)].min_depth > JsonSchema::kMaxDepth) {
      throw InvalidArgument("json_schema: its values nest containers deeper than " + std::to_string(JsonSchema::kMaxDepth));
    }
  }

  const json& root_;
  JsonSchema out_;
  std::map<std::string, int32_t> made_;  // JSON pointer -> node
  std::vector<std::string> aliases_;     // $ref names the next node made is also found by
  std::map<std::string, std::shared_ptr<const RegexDfa>> text_cache_;  // rules -> their automaton
};

JsonSchema JsonSchema::compile(std::string_view schema_json) {
  // Parsing is iterative; copying or writing a value is recursive: deeper texts are refused first.
  bool too_deep = false;
  const json s = json::parse(
      schema_json,
      [&](int depth, json::parse_event_t event, json&) {
        if (depth > kMaxTextDepth && (event == json::parse_event_t::object_start || event == json::parse_event_t::array_start)) {
          too_deep = true;
          return false;
        }
        return true;
      },
      /*allow_exceptions=*/false);
  if (too_deep) throw InvalidArgument("json_schema: the schema nests deeper than " + std::to_string(kMaxTextDepth) + " levels");
  if (s.is_discarded()) throw InvalidArgument("json_schema: the schema is not valid JSON");
  return JsonSchemaCompiler(s).run();
}

int32_t JsonSchema::resolve(int32_t node, uint8_t c) const {
  for (int guard = 0; guard <= size(); ++guard) {
    if (!first_[static_cast<size_t>(node)].test(c)) return -1;
    const Node& n = nodes_[static_cast<size_t>(node)];
    if (n.alternatives.empty()) return node;
    for (int32_t a : n.alternatives) {
      if (first_[static_cast<size_t>(a)].test(c)) {
        node = a;
        break;
      }
    }
  }
  return -1;
}

}  // namespace sparseserve
