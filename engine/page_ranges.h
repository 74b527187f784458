// The prefix cache's page copies (KvCacheManager::take_copies) as the page-copy kernels' ranges
// (kernels/cpu/page_copy.h, kernels/cuda/page_copy.h), checked against the runner's pool: both
// runners' copy_pages start here.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "common/errors.h"
#include "kernels/cpu/page_copy.h"
#include "kvcache/kv_cache_manager.h"

namespace sparseserve {

// InternalError ("<who>: page copy out of range") for a copy whose destination is not a page below
// num_pages, whose source is not one or −1 (zero fill), or whose token range leaves the page.
inline std::vector<kernels::cpu::PageRangeCopy> page_ranges(std::span<const kvcache::PageCopy> copies, int64_t num_pages,
                                                            int64_t page_tokens, const char* who) {
  std::vector<kernels::cpu::PageRangeCopy> ranges;
  ranges.reserve(copies.size());
  for (const kvcache::PageCopy& c : copies) {
    if (!(c.dst >= 0 && c.dst < num_pages && c.src >= -1 && c.src < num_pages && c.offset >= 0 && c.tokens >= 0 &&
          c.offset + c.tokens <= page_tokens)) {
      throw InternalError(std::string(who) + ": page copy out of range");
    }
    ranges.push_back({c.src, c.dst, c.offset, c.tokens});
  }
  return ranges;
}

}  // namespace sparseserve
