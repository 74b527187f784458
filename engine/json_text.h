// The text a JSON constraint follows (JsonPrefix), through anyOf / oneOf alternatives that begin
// alike: one JsonPrefix per alternative the bytes so far still fit, each a parse of the same bytes
// that some continuation completes. A byte that begins a value of several alternatives forks the
// state (one copy per alternative); a copy that refuses a byte is dropped. The copies nest the same
// containers; they differ in the schema node each follows, and so in where a scalar may end.
//
// Bytes are followed one at a time for all copies together, and copies that take the same
// continuations (JsonPrefix::same_state: e.g. "1" read as an integer and as a number, once it has
// ended) are merged, so the work stays bounded by the copies kept. At most kMaxStates copies are
// kept, the first alternatives first: dropping one only narrows what may come next, and every copy
// kept can still be completed, so the text never strands.
#pragma once

#include <string_view>
#include <vector>

#include "engine/json_prefix.h"

namespace sparseserve {

class JsonText {
 public:
  static constexpr size_t kMaxStates = 128;

  // A text that follows `start` (one state, forking as it goes); implicit: a JsonPrefix is a
  // JsonText of one state.
  JsonText(const JsonPrefix& start) : states_{start} {}  // NOLINT(google-explicit-constructor)

  // Some copy takes all of `bytes` (forking where they begin a value of several alternatives).
  bool accepts(std::string_view bytes) const;
  // Feeds bytes; false, with the text unchanged, when no copy takes them.
  bool push(std::string_view bytes);
  // Some copy is a whole value.
  bool complete() const;
  // The root value has ended in every copy (in one it may still go on: "1" is the whole literal 1
  // of an enum and the start of 10 .. 99).
  bool done() const;
  // Every copy is inside a string's plain characters (JsonPrefix::in_plain_string).
  bool in_plain_string() const;
  size_t states() const { return states_.size(); }

 private:
  std::vector<JsonPrefix> states_;
  mutable std::vector<JsonPrefix> scratch_, scratch2_;  // accepts' and push's walks (one thread)
};

}  // namespace sparseserve
