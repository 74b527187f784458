// Page geometry of one sequence under a profile: how positions map to pages per role.
#pragma once

#include <cstdint>
#include <optional>

namespace sparseserve::kvcache {

struct KvCacheConfig {
  int32_t page_tokens = 64;           // 16, 32, 64 or 128
  int32_t logical_page_tokens = 16;   // sub-page for selection metadata; divides page_tokens
  // Throws InvalidArgument naming the field.
  void validate() const;
};

struct StreamingWindow {
  int32_t sink_tokens = 64;    // first tokens always kept (≥ 0)
  int32_t local_tokens = 256;  // most recent tokens kept (≥ 1)
};

// Where one position lives inside a role's per-slot page list.
struct PageLocation {
  int32_t index;   // index into the slot's page list
  int32_t offset;  // token within the page
};

class StreamingGeometry {
 public:
  // Throws InvalidArgument when page_tokens < 1, sink_tokens < 0 or local_tokens < 1.
  StreamingGeometry(int32_t page_tokens, StreamingWindow window);
  int32_t page_tokens() const { return page_tokens_; }
  int32_t sink_pages() const { return sink_pages_; }
  // ceil(local / P) + 1: the band (t - local, t] may straddle that many blocks. Positions past t
  // may already be written when query t attends only within t's own block (a one-token step
  // written ahead); a later block's would overwrite keys t needs (kvcache/README.md).
  int32_t ring_pages() const { return ring_pages_; }
  int32_t pages() const { return sink_pages_ + ring_pages_; }  // per slot, constant
  const StreamingWindow& window() const { return window_; }
  // Page holding `pos` ≥ 0: block b = pos / P; b < sink_pages -> index b, else index
  // sink_pages + (b - sink_pages) mod ring_pages; offset pos mod P. InternalError for pos < 0.
  PageLocation locate(int64_t pos) const;
  // True when key j is attended by query t under the Λ band: j ≤ t and (j < sink or t − j < local).
  bool attends(int64_t t, int64_t j) const {
    return j <= t && (j < window_.sink_tokens || t - j < window_.local_tokens);
  }
  // Pages a slot needs once the sequence holds `len` tokens: min(pages(), ceil(len / P)) (sink pages
  // fill first, then ring pages as blocks arrive; constant once the ring is full). 0 for len ≤ 0.
  int32_t pages_for_length(int64_t len) const;

 private:
  int32_t page_tokens_;
  StreamingWindow window_;
  int32_t sink_pages_, ring_pages_;
};

}  // namespace sparseserve::kvcache
