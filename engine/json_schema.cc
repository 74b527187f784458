#include "engine/json_schema.h"

#include <algorithm>
#include <bit>
#include <bitset>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>

#include "common/errors.h"
#include "engine/json_file.h"
#include "engine/regex_dfa.h"
#include "engine/value_regex.h"

namespace sparseserve {

namespace {

using nlohmann::json;

constexpr int32_t kMaxNesting = 64;     // schema levels below the root
constexpr int32_t kMaxTextDepth = 256;  // JSON nesting of the schema's text
constexpr size_t kMaxNodes = 4096;      // schemas (nodes) in one compiled schema

const std::set<std::string, std::less<>> kAnnotations = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
    "writeOnly", "$defs", "definitions",
    // OpenAPI's hint (Pydantic's discriminated unions): the alternatives' own const / enum values
    // already tell them apart.
    "discriminator"};
const std::set<std::string, std::less<>> kKeywords = {
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "$ref", "pattern", "format", "minLength", "maxLength",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"};
constexpr size_t kMaxTextRules = 16;  // distinct pattern / format / length rules in one schema (each
                                      // compile is bounded by RegexDfa's limits; 16 bound the sum)


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
      if (key == std::string_view("oneOf")) one_of_.emplace_back(id, at);
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
  // as an automaton over the value's JSON text (Node::number; engine/value_regex.h).
  void bounds(const json& s, int32_t id, const std::string& at) {
    std::optional<DecimalBound> lo, hi;
    for (const char* key : {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"}) {
      if (!s.contains(key)) continue;
      const json& v = s[key];
      if (!v.is_number() || !(std::fabs(v.get<double>()) <= 1e15)) {
        throw InvalidArgument(std::string("json_schema: '") + key + "' must be a number of size at most 10^15 (at " + at + ")");
      }
      const std::string k = key;
      const bool exclusive = k.starts_with("exclusive");
      const DecimalBound b = v.is_number_integer() ? DecimalBound::of(v.get<int64_t>(), exclusive)
                                                   : DecimalBound::of(v.get<double>(), exclusive);
      std::optional<DecimalBound>& side = k == "minimum" || k == "exclusiveMinimum" ? lo : hi;
      side = side ? tighter(*side, b, &side == &lo) : b;
    }
    if (!lo && !hi) return;
    const bool number = node(id).types & JsonSchema::kNumber;
    const std::string texts = number ? number_texts(lo, hi) : integer_texts(lo, hi);
    if (texts.empty()) {
      throw InvalidArgument(std::string("json_schema: its bounds allow no number") +
                            (number ? " written with at most 9 integer and 6 fraction digits" : "") + " (at " + at + ")");
    }
    node(id).number = std::make_shared<const RegexDfa>(RegexDfa::compile(texts));
  }

  // The string rules of s, for the cache of identical ones (Pydantic repeats them).
  static std::string key_of(const json& s) {
    std::string key;
    for (const char* k : {"pattern", "format", "minLength", "maxLength"}) key += (s.contains(k) ? s[k].dump() : "") + "\x01";
    return key;
  }

  // Strings: "pattern" (searched for, as JSON Schema's patterns are), "format" (format_regex),
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
      // Raw characters and the short escapes (\b \t \n \f \r): everything but other control
      // characters. Compiled once for every schema.
      static const RegexDfa kWritable = RegexDfa::compile(R"([^\x00-\x07\x0b\x0e-\x1f]*)");
      RegexDfa text = kWritable;
      if (pattern) {
        if (!s["pattern"].is_string()) fail("'pattern' must be a string");
        text = RegexDfa::intersect(text, RegexDfa::compile(s["pattern"].get<std::string>(), RegexMode::kSearch));
      }
      if (format) {
        const json& f = s["format"];
        const std::string* regex = f.is_string() ? format_regex(f.get<std::string>()) : nullptr;
        if (regex == nullptr) {
          fail("'format' " + f.dump() + " is not supported (date, time, date-time, uuid, ipv4, email)");
        }
        text = RegexDfa::intersect(text, RegexDfa::compile(*regex));
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
    out_.first_.assign(f.begin(), f.end());
    for (size_t i = 0; i < nodes.size(); ++i) {
      if (!nodes[i].alternatives.empty()) flatten(static_cast<int32_t>(i));
    }
    for (const auto& [id, at] : one_of_) exclusive_or_refused(id, at);
  }

  // A oneOf whose alternatives may begin alike is taken only when a tag tells them apart, as in
  // Pydantic's discriminated unions: each alternative an object requiring a property of one name
  // whose const / enum values no other alternative's share. Then no value matches two of them, and
  // following them side by side (as anyOf) keeps oneOf's meaning.
  void exclusive_or_refused(int32_t id, const std::string& at) {
    const auto& nodes = out_.nodes_;
    const auto& alts = nodes[static_cast<size_t>(id)].alternatives;
    bool overlap = false;
    for (size_t a = 0; a < alts.size() && !overlap; ++a) {
      for (size_t b = a + 1; b < alts.size() && !overlap; ++b) {
        overlap = (out_.first_[static_cast<size_t>(alts[a])] & out_.first_[static_cast<size_t>(alts[b])]).any();
      }
    }
    if (!overlap) return;
    const auto refuse = [&] {
      throw InvalidArgument("json_schema: 'oneOf' alternatives that may begin alike must be told apart by a "
                            "required property whose const / enum values differ (a discriminator); use 'anyOf' "
                            "for a value that may match several (at " + at + ")");
    };
    const JsonSchema::Node& first = nodes[static_cast<size_t>(alts[0])];
    for (const JsonSchema::Property& tag : first.properties) {
      std::set<json> seen;  // by JSON value (json's <): 1 and 1.0, 0 and -0.0 are one tag
      bool ok = true;
      for (int32_t a : alts) {
        const JsonSchema::Node& n = nodes[static_cast<size_t>(a)];
        if (n.any || !n.alternatives.empty() || n.types != JsonSchema::kObject) refuse();
        const auto p = std::find_if(n.properties.begin(), n.properties.end(),
                                    [&](const JsonSchema::Property& q) { return q.key == tag.key; });
        const auto i = static_cast<size_t>(p - n.properties.begin());
        if (p == n.properties.end() || !(n.required >> i & 1)) {
          ok = false;
          break;
        }
        const auto& literals = nodes[static_cast<size_t>(p->node)].literals;
        if (literals.empty()) {
          ok = false;
          break;
        }
        for (const std::string& l : literals) ok = ok && seen.insert(json::parse(l)).second;
        if (!ok) break;
      }
      if (ok) return;
    }
    refuse();
  }

  // An anyOf node's leaves (Node::leaves, by_byte): its alternatives with nested anyOf resolved,
  // in order, each once; an anyOf reached again through $ref adds nothing new.
  void flatten(int32_t id) {
    auto& nodes = out_.nodes_;
    std::vector<int32_t> leaves, stack = {id};
    std::vector<bool> seen(nodes.size());
    while (!stack.empty()) {
      const int32_t n = stack.back();
      stack.pop_back();
      if (seen[static_cast<size_t>(n)]) continue;
      seen[static_cast<size_t>(n)] = true;
      const auto& alts = nodes[static_cast<size_t>(n)].alternatives;
      if (alts.empty()) {
        leaves.push_back(n);
        continue;
      }
      for (auto a = alts.rbegin(); a != alts.rend(); ++a) stack.push_back(*a);  // first alternative first
    }
    if (leaves.size() > static_cast<size_t>(JsonSchema::kMaxAlternatives)) {
      throw InvalidArgument("json_schema: an anyOf / oneOf has more than " + std::to_string(JsonSchema::kMaxAlternatives) +
                            " alternatives in all");
    }
    JsonSchema::Node& node = nodes[static_cast<size_t>(id)];
    node.by_byte.assign(256, 0);
    for (size_t i = 0; i < leaves.size(); ++i) {
      const auto& f = out_.first_[static_cast<size_t>(leaves[i])];
      for (int c = 0; c < 256; ++c) {
        if (f.test(static_cast<size_t>(c))) node.by_byte[static_cast<size_t>(c)] |= uint64_t{1} << i;
      }
    }
    node.leaves = std::move(leaves);
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
  std::vector<std::pair<int32_t, std::string>> one_of_;  // oneOf nodes and where they are
  std::vector<std::string> aliases_;     // $ref names the next node made is also found by
  std::map<std::string, std::shared_ptr<const RegexDfa>> text_cache_;  // rules -> their automaton
};

JsonSchema JsonSchema::compile(std::string_view schema_json) {
  // Parsing is iterative; copying or writing a value is recursive: deeper texts are refused first.
  bool too_deep = false;
  const json s = parse_json_bounded(schema_json, kMaxTextDepth, &too_deep);
  if (too_deep) throw InvalidArgument("json_schema: the schema nests deeper than " + std::to_string(kMaxTextDepth) + " levels");
  if (s.is_discarded()) throw InvalidArgument("json_schema: the schema is not valid JSON");
  return JsonSchemaCompiler(s).run();
}

int32_t JsonSchema::resolutions(int32_t node, uint8_t c) const {
  const Node& n = nodes_[static_cast<size_t>(node)];
  if (n.alternatives.empty()) return first_[static_cast<size_t>(node)].test(c) ? 1 : 0;
  return std::popcount(n.by_byte[c]);
}

int32_t JsonSchema::resolve(int32_t node, uint8_t c, int32_t k) const {
  const Node& n = nodes_[static_cast<size_t>(node)];
  if (n.alternatives.empty()) return first_[static_cast<size_t>(node)].test(c) && k == 0 ? node : -1;
  uint64_t bits = n.by_byte[c];
  for (; bits != 0; bits &= bits - 1, --k) {
    if (k == 0) return n.leaves[static_cast<size_t>(std::countr_zero(bits))];
  }
  return -1;
}

}  // namespace sparseserve
