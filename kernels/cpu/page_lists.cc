#include "kernels/cpu/page_lists.h"

#include <algorithm>
#include <string>

#include "common/errors.h"

namespace sparseserve::kernels::cpu {

namespace {

bool inside(int64_t at, int64_t count, size_t size) { return at >= 0 && at + count <= static_cast<int64_t>(size); }

}  // namespace

void expand_key_runs(std::span<const KeyRun> runs, std::span<const int32_t> store, std::span<const int32_t> staged,
                     int32_t page_tokens, std::span<int32_t> out) {
  if (page_tokens <= 0) throw InvalidArgument("expand_key_runs: page_tokens must be positive");
  for (size_t i = 0; i < runs.size(); ++i) {
    const KeyRun& r = runs[i];
    const auto bad = [&](const char* what) {
      throw InvalidArgument("expand_key_runs: run " + std::to_string(i) + " " + what);
    };
    const bool positions = r.pos0_at >= 0;
    if (r.count < 0 || r.src_step < 0) bad("has a negative count or step");
    if (!inside(r.pages_at, r.count, out.size()) ||
        (positions && (!inside(r.pos0_at, r.count, out.size()) || !inside(r.len_at, r.count, out.size())))) {
      bad("writes outside out");
    }
    if (r.src_step == 0) {
      if (r.first < 0 || !inside(int64_t{r.src} + r.first, r.count, store.size())) bad("reads outside the store");
      if (r.count > 0 && int64_t{r.first + r.count - 1} * page_tokens >= r.end) bad("lists a block past its end");
    } else if (!inside(r.src, r.count, staged.size()) ||
               (positions && !inside(int64_t{r.src} + 2 * int64_t{r.src_step}, r.count, staged.size()))) {
      bad("reads outside the staged entries");
    }
    for (int32_t e = 0; e < r.count; ++e) {
      int32_t page, pos0, len;
      if (r.src_step == 0) {
        const int32_t b = r.first + e;
        page = store[static_cast<size_t>(r.src + b)];
        pos0 = b * page_tokens;
        len = std::min(page_tokens, r.end - pos0);
      } else {
        const auto s = static_cast<size_t>(r.src + e);
        page = staged[s];
        pos0 = positions ? staged[s + static_cast<size_t>(r.src_step)] : 0;
        len = positions ? staged[s + 2 * static_cast<size_t>(r.src_step)] : 0;
      }
      out[static_cast<size_t>(r.pages_at + e)] = page;
      if (positions) {
        out[static_cast<size_t>(r.pos0_at + e)] = pos0;
        out[static_cast<size_t>(r.len_at + e)] = len;
      }
    }
  }
}

void scatter_pairs(std::span<const int32_t> pairs, std::span<int32_t> dst) {
  if (pairs.size() % 2 != 0) throw InvalidArgument("scatter_pairs: pairs must have an even length");
  for (size_t i = 0; i < pairs.size(); i += 2) {
    if (!inside(pairs[i], 1, dst.size())) throw InvalidArgument("scatter_pairs: index outside dst");
    dst[static_cast<size_t>(pairs[i])] = pairs[i + 1];
  }
}

}  // namespace sparseserve::kernels::cpu
