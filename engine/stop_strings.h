// Holds back streamed text that might be the start of a stop string, so a stop string never leaks
// into the output, not even partly (OpenAI / vLLM semantics: the stop string itself is dropped).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace sparseserve {

class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stops);

  struct Result {
    std::string text;     // safe to emit now
    bool stopped = false; // a stop string matched; text ends right before it
    std::string matched;  // the stop string that matched
  };
  // Adds newly decoded text; returns what can be emitted. may_stop false (vLLM's min_tokens, before
  // the minimum): no stop string may end in this piece; one that begins in it and ends in a later
  // piece still counts, as vLLM matches each new piece with the stop string's length − 1 bytes before.
  Result push(std::string_view piece, bool may_stop = true);
  // End of generation without a match: everything held back.
  std::string flush();

 private:
  std::vector<std::string> stops_;
  std::string held_;
  size_t unchecked_ = 0;  // held_'s first bytes, pushed with may_stop false: no match may end in them
};

}  // namespace sparseserve
