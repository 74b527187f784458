#include "engine/stop_strings.h"

#include <algorithm>

namespace sparseserve {

StopStringFilter::StopStringFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

StopStringFilter::Result StopStringFilter::push(std::string_view piece, bool may_stop) {
  held_ += piece;
  Result r;
  if (stops_.empty()) {
    r.text = std::move(held_);
    held_.clear();
    return r;
  }
  if (!may_stop) {
    unchecked_ = held_.size();
  } else {
    // As vLLM: the first stop string in the request's order that has a match ending past the
    // unchecked bytes wins, at its earliest such match (not the earliest match of any of them).
    size_t best = std::string::npos;
    for (const std::string& s : stops_) {
      const size_t from = unchecked_ >= s.size() ? unchecked_ - s.size() + 1 : 0;
      best = held_.find(s, from);
      if (best != std::string::npos) {
        r.matched = s;
        break;
      }
    }
    if (best != std::string::npos) {
      r.text = held_.substr(0, best);
      r.stopped = true;
      held_.clear();
      unchecked_ = 0;
      return r;
    }
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const std::string& s : stops_) {
    for (size_t len = std::min(s.size() - 1, held_.size()); len > keep; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        keep = len;
        break;
      }
    }
  }
  const size_t emitted = held_.size() - keep;
  r.text = held_.substr(0, emitted);
  held_.erase(0, emitted);
  unchecked_ = unchecked_ > emitted ? unchecked_ - emitted : 0;
  return r;
}

std::string StopStringFilter::flush() {
  std::string out = std::move(held_);
  held_.clear();
  unchecked_ = 0;
  return out;
}

}  // namespace sparseserve
