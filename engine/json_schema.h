// A JSON Schema compiled for constrained decoding (response_format json_schema, vLLM's guided_json):
// the subset that structured-output schemas use (OpenAI's strict schemas, Pydantic's), each node a
// value the recognizer (engine/json_prefix.h) can follow byte by byte.
//
// Supported: "type" (a name or a list of them), "properties" + "required", "additionalProperties"
// false (absent is taken as false too, as vLLM's default xgrammar backend does), true or a schema
// (Pydantic's dict fields; such keys are written without escapes and never as a property's), "items" with
// "minItems" / "maxItems", "enum" / "const" (values written compactly, object keys sorted, as
// nlohmann::json writes them), "anyOf" / "oneOf" (at most kMaxAlternatives alternatives in all once
// nested ones are flattened; alternatives that begin alike are followed side by side, JsonText; a
// "oneOf" whose alternatives may begin alike must be a tagged union, objects told apart by a
// required const / enum property, so that no value matches two), "$ref" to "#", "#/$defs/NAME" or "#/definitions/NAME" (recursion
// included; at most 4096 schemas in all, values nesting at most kMaxDepth containers), and the
// annotations (title, description, default, examples, ...), which constrain nothing. `true` or {}
// is any JSON value. Strings may carry "pattern" (the syntax of engine/regex_parse.h, searched for
// as JSON Schema says), "format" (date, time, date-time, uuid, ipv4, email) and "minLength" /
// "maxLength"; numbers "minimum", "maximum", "exclusiveMinimum" and "exclusiveMaximum" (a bounded
// "number" is written without exponent, with at most 6 fraction and 9 integer digits). Any other
// keyword (multipleOf, patternProperties, another format, ...) is refused, never ignored:
// the output could not be promised to validate.
#pragma once

#include <bitset>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sparseserve {

class RegexDfa;

class JsonSchema {
 public:
  enum Type : uint8_t {
    kObject = 1, kArray = 2, kString = 4, kInteger = 8, kNumber = 16, kBoolean = 32, kNull = 64,
  };
  static constexpr int32_t kMaxProperties = 64;  // per object
  static constexpr int32_t kMaxDepth = 32;       // containers a value of a schema nests (JsonPrefix's limit)
  static constexpr int32_t kMaxLiterals = 64;    // per enum
  static constexpr int32_t kMaxAlternatives = 64;  // per anyOf / oneOf, nested ones flattened

  struct Property {
    std::string key;  // as the text writes it between the quotes (JSON-escaped)
    int32_t node = -1;
  };
  struct Node {
    bool any = false;                  // any JSON value (nothing else below applies)
    uint8_t types = 0;                 // Type bits a value may have
    std::vector<std::string> literals;  // enum / const: the value is one of these texts exactly
    std::vector<int32_t> alternatives;  // anyOf / oneOf: the value is one of these nodes
    // anyOf / oneOf flattened: the alternatives that have none of their own (nested anyOf resolved,
    // each once), and per first byte c, bit i of by_byte[c]: a value of leaves[i] may begin with c.
    std::vector<int32_t> leaves;
    std::vector<uint64_t> by_byte;
    // Objects: these keys, each at most once, the required ones all; other keys only with
    // `additional` (additionalProperties true or a schema), written without escapes.
    std::vector<Property> properties;
    uint64_t required = 0;             // bit i: properties[i] is required
    int32_t additional = -1;           // node of the values of other keys; -1: no other key
    // Strings: non-null when "pattern", "format" or "minLength"/"maxLength" constrain the decoded
    // text, which is then written without \u escapes (the automaton has no character that needs one).
    std::shared_ptr<const RegexDfa> text;
    // Numbers: non-null when "minimum" / "maximum" (or the exclusive ones) bound them: the JSON
    // texts of the allowed values.
    std::shared_ptr<const RegexDfa> number;
    // Arrays.
    int32_t items = -1;                // node of every item
    uint32_t min_items = 0, max_items = UINT32_MAX;
    // The least container nesting a value needs (its own container counted): overall, as an object,
    // as an array (kNoDepth: it cannot be one). A recognizer with a depth limit opens a container
    // only where this still fits, so it never reaches a text it cannot finish.
    int32_t min_depth = 0, min_object_depth = 0, min_array_depth = 0;
  };
  static constexpr int32_t kNoDepth = INT32_MAX;

  // Compiles a schema given as JSON text. Throws InvalidArgument naming the keyword and where it is
  // (a JSON pointer) for text that is not JSON, a keyword outside the subset, or a bad value.
  static JsonSchema compile(std::string_view schema_json);

  const Node& node(int32_t i) const { return nodes_[static_cast<size_t>(i)]; }
  int32_t root() const { return root_; }
  int32_t size() const { return static_cast<int32_t>(nodes_.size()); }
  // How many nodes a value of `node` may follow once it begins with byte c: 0 (none begins with c),
  // 1, or more for anyOf alternatives that begin alike.
  int32_t resolutions(int32_t node, uint8_t c) const;
  // The k-th of them (k < resolutions(node, c)): `node` itself, or an anyOf alternative that has
  // none of its own.
  int32_t resolve(int32_t node, uint8_t c, int32_t k = 0) const;

 private:
  friend class JsonSchemaCompiler;
  std::vector<Node> nodes_;
  int32_t root_ = 0;
  std::vector<std::bitset<256>> first_;  // per node: the bytes its values may begin with
};

}  // namespace sparseserve
