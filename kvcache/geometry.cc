#include "kvcache/geometry.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/errors.h"

namespace sparseserve::kvcache {

void KvCacheConfig::validate() const {
  if (page_tokens != 16 && page_tokens != 32 && page_tokens != 64 && page_tokens != 128) {
    throw InvalidArgument(fmt::format("page_tokens is {}; allowed: 16, 32, 64, 128", page_tokens));
  }
  if (logical_page_tokens < 1 || page_tokens % logical_page_tokens != 0) {
    throw InvalidArgument(fmt::format("logical_page_tokens is {}; it must be ≥ 1 and divide page_tokens ({})",
                                      logical_page_tokens, page_tokens));
  }
}

namespace {
// a ≥ 0, b > 0; no overflow for any int64 a.
int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }
}  // namespace

StreamingGeometry::StreamingGeometry(int32_t page_tokens, StreamingWindow window)
    : page_tokens_(page_tokens), window_(window) {
  if (page_tokens < 1) throw InvalidArgument(fmt::format("streaming geometry: page_tokens is {}", page_tokens));
  if (window.sink_tokens < 0) throw InvalidArgument(fmt::format("sink_tokens is {}; it must be ≥ 0", window.sink_tokens));
  if (window.local_tokens < 1) throw InvalidArgument(fmt::format("local_tokens is {}; it must be ≥ 1", window.local_tokens));
  const int64_t sink = ceil_div(window.sink_tokens, page_tokens);
  const int64_t ring = ceil_div(window.local_tokens, page_tokens) + 1;
  if (sink + ring > INT32_MAX) throw InvalidArgument("streaming window needs more than 2^31 - 1 pages per slot");
  sink_pages_ = static_cast<int32_t>(sink);
  ring_pages_ = static_cast<int32_t>(ring);
}

PageLocation StreamingGeometry::locate(int64_t pos) const {
  check(pos >= 0, "StreamingGeometry::locate: negative position");
  const int64_t block = pos / page_tokens_;
  const auto offset = static_cast<int32_t>(pos % page_tokens_);
  if (block < sink_pages_) return {static_cast<int32_t>(block), offset};
  return {sink_pages_ + static_cast<int32_t>((block - sink_pages_) % ring_pages_), offset};
}

int32_t StreamingGeometry::pages_for_length(int64_t len) const {
  if (len <= 0) return 0;
  return static_cast<int32_t>(std::min<int64_t>(pages(), ceil_div(len, page_tokens_)));
}

}  // namespace sparseserve::kvcache
