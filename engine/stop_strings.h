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
  // Adds newly decoded text; returns what can be emitted.
  Result push(std::string_view piece);
  // End of generation without a match: everything held back.
  std::string flush();

 private:
  std::vector<std::string> stops_;
  std::string held_;
};

}  // namespace sparseserve
