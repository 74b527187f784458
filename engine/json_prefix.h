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
// The state is a small trivially copyable value: copying it and pushing a token's bytes is how a
// token is tried.
#pragma once

#include <cstdint>
#include <string_view>

namespace sparseserve {

class JsonPrefix {
 public:
  static constexpr int32_t kMaxDepth = 128;

  // root_object: the text must be an object (OpenAI's JSON mode); otherwise any value.
  explicit JsonPrefix(bool root_object = true, int32_t max_whitespace_run = 32);

  // Feeds bytes. False when they cannot continue any JSON text (the state is then unspecified).
  bool push(std::string_view bytes);
  bool push(uint8_t byte);
  // The bytes so far are a whole JSON text (trailing whitespace allowed; a root number counts as
  // whole where it may end).
  bool complete() const;
  int32_t depth() const { return depth_; }

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
    kNumMinus,      // '-'
    kNumZero,       // a leading 0
    kNumInt,        // integer digits
    kNumDot,        // '.'
    kNumFrac,       // fraction digits
    kNumExpMark,    // 'e' / 'E'
    kNumExpSign,    // the exponent's sign
    kNumExp,        // exponent digits
  };
  bool structural(uint8_t c);  // a byte between tokens (modes kValue .. kDone)
  bool start_value(uint8_t c);
  void end_value() { mode_ = depth_ == 0 ? Mode::kDone : Mode::kCommaOrClose; }
  bool open(bool object);
  bool close(bool object);
  bool top_is_object() const { return (stack_[(depth_ - 1) / 64] >> ((depth_ - 1) % 64)) & 1; }
  static bool number_may_end(Mode m) {
    return m == Mode::kNumZero || m == Mode::kNumInt || m == Mode::kNumFrac || m == Mode::kNumExp;
  }

  uint64_t stack_[kMaxDepth / 64] = {};  // bit d: the container at depth d is an object
  const char* literal_ = nullptr;
  int32_t depth_ = 0;
  int32_t max_ws_;
  int32_t ws_run_ = 0;
  uint16_t code_ = 0;
  Mode mode_ = Mode::kValue;
  uint8_t hex_left_ = 0, utf8_left_ = 0, lo_ = 0, hi_ = 0;
  bool root_object_;
  bool key_ = false;
  bool high_surrogate_ = false;  // a \uD800-\uDBFF was read: a low one must follow at once
};

}  // namespace sparseserve
