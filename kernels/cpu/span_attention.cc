#include "kernels/cpu/span_attention.h"

#include <algorithm>
#include <cstring>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec.h"

namespace sparseserve::kernels::cpu {

namespace {

// Calls f(lo, hi) for each maximal run [lo, hi) of allowed key positions inside [p0, p1), j ≤ t.
template <typename F>
void for_allowed(const AttentionMask& m, int64_t t, int64_t p0, int64_t p1, F&& f) {
  p1 = std::min(p1, t + 1);
  if (p0 >= p1) return;
  switch (m.kind) {
    case AttentionMask::Kind::kCausal:
      f(p0, p1);
      return;
    case AttentionMask::Kind::kBand: {
      const int64_t sink_end = std::min(p1, m.sink);
      const int64_t local_lo = std::max(p0, t - m.local + 1);
      if (p0 < sink_end) f(p0, std::min(sink_end, p1));
      const int64_t lo = std::max(local_lo, std::max(p0, sink_end));
      if (lo < p1) f(lo, p1);
      return;
    }
    case AttentionMask::Kind::kBlocks: {
      const int64_t B = m.block_tokens;
      for (int64_t lo = p0; lo < p1;) {
        const int64_t hi = std::min(p1, (lo / B + 1) * B);
        if (m.allowed[lo / B]) f(lo, hi);
        lo = hi;
      }
      return;
    }
  }
}

}  // namespace

void attend_spans(const float* q, int64_t t, std::span<const KeySpan> spans, const AttentionMask& mask,
                  int64_t D, float scale, float* out, std::vector<float>& scratch) {
  size_t n = 0;
  for (const KeySpan& s : spans) {
    for_allowed(mask, t, s.pos0, s.pos0 + s.n, [&](int64_t lo, int64_t hi) { n += static_cast<size_t>(hi - lo); });
  }
  if (scratch.size() < n) scratch.resize(n);
  std::memset(out, 0, sizeof(float) * static_cast<size_t>(D));
  if (n == 0) return;
  float* scores = scratch.data();
  size_t i = 0;
  for (const KeySpan& s : spans) {
    for_allowed(mask, t, s.pos0, s.pos0 + s.n, [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) scores[i++] = vec::dot(q, s.k + (j - s.pos0) * s.stride, D) * scale;
    });
  }
  softmax(scores, static_cast<int64_t>(n));
  i = 0;
  for (const KeySpan& s : spans) {
    for_allowed(mask, t, s.pos0, s.pos0 + s.n, [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) vec::axpy(scores[i++], s.v + (j - s.pos0) * s.stride, out, D);
    });
  }
}

}  // namespace sparseserve::kernels::cpu
