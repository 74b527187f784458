// Incremental recognizer of one JSON text (RFC 8259) over bytes, for constrained decoding: it
// accepts exactly the byte strings that some continuation turns into a JSON text, and says when
// the bytes so far are one already.
//
// Strict RFC 8259 as nlohmann::json::accept reads it: no comments, no trailing commas, numbers
// without leading zeros or a bare '.', strings of valid UTF-8 (no overlong forms, no surrogates, at
// most U+10FFFF) without raw control characters, \u escapes with surrogates only in high-low
// pairs. Two limits keep a sampled text finite where grammar alone would not:
//   - containers nest at most kMaxDepth deep;
//   - at most `max_whitespace_run` whitespace bytes in a row (a model may otherwise emit spaces or
//     newlines until max_tokens; after a complete text, the run limit is what leaves it nothing
//     but a stop token).
// With a JsonSchema (engine/json_schema.h) the text must also be a value of the schema: its types,
// exactly its properties (each once, the required ones all), its item counts, its enum texts, its
// anyOf alternatives, its strings' patterns, formats and lengths (such a string is written without
// \u escapes); containers then nest at most kMaxSchemaDepth deep.
// The state is a small trivially copyable value: copying it and pushing a token's bytes is how a
// token is tried.
#pragma once

#include <cstdint>
#include <string_view>

#include "engine/json_schema.h"

namespace sparseserve {

class JsonPrefix {
 public:
  static constexpr int32_t kMaxDepth = 128;
  static constexpr int32_t kMaxSchemaDepth = JsonSchema::kMaxDepth;

  // root_object: the text must be an object (OpenAI's JSON mode); otherwise any value.
  explicit JsonPrefix(bool root_object = true, int32_t max_whitespace_run = 32);
  // The text must be a value of `schema`, which must outlive this state and its copies.
  explicit JsonPrefix(const JsonSchema& schema, int32_t max_whitespace_run = 32);

  // Feeds bytes. False when they cannot continue any JSON text (the state is then unspecified).
  bool push(std::string_view bytes);
  bool push(uint8_t byte);
  // The bytes so far are a whole JSON text (trailing whitespace allowed; a root number counts as
  // whole where it may end).
  bool complete() const;
  // Inside a string's characters (not a schema key, an escape or a multi-byte character): printable
  // ASCII other than '"' and '\\' keeps it there, whatever follows.
  bool in_plain_string() const { return mode_ == Mode::kString && !high_surrogate_ && text_state_ < 0; }
  // The root value has ended (its closing byte was read): only whitespace may follow.
  bool done() const { return mode_ == Mode::kDone; }
  int32_t depth() const { return depth_; }
  // anyOf alternatives that begin alike (engine/json_text.h follows them side by side): after
  // push(byte), forks() is how many alternatives the value that byte began may follow (0 when it
  // began none or only one could), and the state took alternative k of pick(k) called before that
  // push (else the first). forked(): some byte pushed since clear_forked() had forks() > 1.
  int32_t forks() const { return forks_; }
  void pick(int32_t k) { pick_ = static_cast<uint8_t>(k); }
  bool forked() const { return forked_; }
  void clear_forked() { forked_ = false; }
  // Both states take exactly the same continuations (JsonText merges such copies): equal in every
  // field the current mode may still read; fields a finished value left behind are not compared.
  bool same_state(const JsonPrefix& o) const;

 private:
  enum class Mode : uint8_t {
    kValue,         // a value starts here
    kValueOrClose,  // after '[': a value or ']'
    kKeyOrClose,    // after '{': a key or '}'
    kKey,           // after ',' in an object: a key
    kColon,         // after a key
    kCommaOrClose,  // after a value inside a container
    kDone,          // after the root value: whitespace only
    kString,        // inside a string (a key when key_)
    kEscape,        // after '\' in a string
    kHex,           // in \uXXXX: hex_left digits to go, code_ so far
    kUtf8,          // inside a multi-byte character: utf8_left bytes to go, the next in [lo_, hi_]
    kLiteral,       // inside true / false / null: literal_ is the rest
    kMatch,         // a schema enum value: alive_ are the node's literals that match the pos_ bytes so far
    kKeyMatch,      // a schema object's key after its quote: alive_ are the properties it may still be
    kNumMinus,      // '-'
    kNumZero,       // a leading 0
    kNumInt,        // integer digits
    kNumDot,        // '.'
    kNumFrac,       // fraction digits
    kNumExpMark,    // 'e' / 'E'
    kNumExpSign,    // the exponent's sign
    kNumExp,        // exponent digits
    kNumText,       // a number with schema bounds: text_state_ in its node's Node::number
  };
  // A schema container's progress: node -1 for one inside an unconstrained value.
  struct Frame {
    int32_t node = -1;
    uint32_t items = 0;  // arrays: items completed
    uint64_t seen = 0;   // objects: bit i, properties[i] was written
  };
  bool structural(uint8_t c);  // a byte between tokens (modes kValue .. kDone)
  bool start_value(uint8_t c);
  bool start_schema_value(uint8_t c);
  bool start_plain(uint8_t c, int32_t node);  // a value's first byte; node: its container's schema (-1: none)
  void end_value();
  bool open(bool object, int32_t node);
  bool close(bool object);
  bool match(uint8_t c);      // kMatch
  bool match_key(uint8_t c);  // kKeyMatch
  bool literal_complete() const;  // kMatch: an alive literal is whole
  // A constrained string's text (text_state_ ≥ 0) takes the decoded byte b; true for any other string.
  bool text_step(uint8_t b);
  // The schema object the current container follows, or null (no schema, or inside an
  // unconstrained value).
  const JsonSchema::Node* object_schema() const;
  // The properties of `n` a key may still name: unseen, with a value that fits under the depth limit.
  uint64_t open_properties(const JsonSchema::Node& n) const;
  // `n` takes keys other than its properties' (additionalProperties), with values that fit.
  bool free_keys(const JsonSchema::Node& n) const;
  // A value of `node` may begin inside the current container without passing kMaxSchemaDepth.
  bool fits(int32_t node) const {
    return node < 0 || static_cast<int64_t>(depth_) + schema_->node(node).min_depth <= kMaxSchemaDepth;
  }
  bool top_is_object() const { return (stack_[(depth_ - 1) / 64] >> ((depth_ - 1) % 64)) & 1; }
  static bool number_may_end(Mode m) {
    return m == Mode::kNumZero || m == Mode::kNumInt || m == Mode::kNumFrac || m == Mode::kNumExp;
  }

  uint64_t stack_[kMaxDepth / 64] = {};  // bit d: the container at depth d is an object
  const JsonSchema* schema_ = nullptr;
  Frame frames_[kMaxSchemaDepth];        // with a schema: frame d is the container at depth d
  int32_t expect_ = -1;                  // with a schema: the node the next value follows (-1: any)
  int32_t match_node_ = -1;              // kMatch: the node whose literals match
  uint64_t alive_ = 0;                   // kMatch / kKeyMatch: candidates still matching
  uint64_t named_ = 0;                   // kKeyMatch: every property (open or not) whose key still matches
  uint32_t pos_ = 0;                     // kMatch / kKeyMatch: bytes matched
  int32_t property_ = -1;                // after a schema key: the property it named, or kFreeKey
  static constexpr int32_t kFreeKey = -2;  // a key no property has: its value follows Node::additional
  const char* literal_ = nullptr;
  int32_t depth_ = 0;
  int32_t max_ws_;
  int32_t ws_run_ = 0;
  uint16_t code_ = 0;
  Mode mode_ = Mode::kValue;
  uint8_t hex_left_ = 0, utf8_left_ = 0, lo_ = 0, hi_ = 0;
  bool root_object_;
  // A string whose schema has a Node::text (or in kNumText, a bounded number's Node::number): its
  // node, and the automaton's state after the decoded characters so far (-1: the string is
  // unconstrained, or none is open).
  int32_t text_node_ = -1;
  int32_t text_state_ = -1;
  bool key_ = false;
  bool free_key_ = false;        // kString, key_: a free key (no escapes)
  bool high_surrogate_ = false;  // a \uD800-\uDBFF was read: a low one must follow at once
  bool integer_ = false;         // the number being read must be an integer (schema type)
  uint8_t forks_ = 0, pick_ = 0;  // see forks() and pick()
  bool forked_ = false;
};

}  // namespace sparseserve
