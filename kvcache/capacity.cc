#include "kvcache/capacity.h"

#include <string_view>

#include <fmt/format.h>

#include "common/errors.h"

namespace sparseserve::kvcache {

namespace {

size_t mul(size_t a, size_t b) {
  size_t out = 0;
  if (__builtin_mul_overflow(a, b, &out)) throw InvalidArgument("page size overflows size_t");
  return out;
}

size_t as_size(int32_t v) { return static_cast<size_t>(v); }

[[noreturn]] void bad_bytes(std::string_view text, std::string_view why) {
  throw InvalidArgument(fmt::format("byte size '{}': {} (expected e.g. 2GiB, 512MiB, 1.5GB or 1048576)", text, why));
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

size_t PageShape::page_bytes() const {
  if (head_dim < 1) throw InvalidArgument(fmt::format("page shape: head_dim is {}", head_dim));
  if (bytes_per_element < 1) throw InvalidArgument(fmt::format("page shape: bytes_per_element is {}", bytes_per_element));
  KvCacheConfig{page_tokens, with_metadata ? logical_page_tokens : 1}.validate();
  const size_t pair = mul(mul(as_size(head_dim), 2), as_size(bytes_per_element));  // (K, V) or (min, max) row
  size_t bytes = mul(as_size(page_tokens), pair);
  if (with_metadata) {
    const size_t meta = mul(as_size(page_tokens / logical_page_tokens), pair);
    if (__builtin_add_overflow(bytes, meta, &bytes)) throw InvalidArgument("page size overflows size_t");
  }
  return bytes;
}

int32_t pages_for_budget(size_t budget_bytes, const PageShape& shape) {
  const size_t page = shape.page_bytes();
  const size_t n = budget_bytes / page;
  if (n == 0) {
    throw InvalidArgument(fmt::format("a KV cache budget of {} bytes holds no page of {} bytes", budget_bytes, page));
  }
  if (n > INT32_MAX) {
    throw InvalidArgument(fmt::format("a KV cache budget of {} bytes buys {} pages of {} bytes; at most {} are addressable",
                                      budget_bytes, n, page, INT32_MAX));
  }
  return static_cast<int32_t>(n);
}

size_t parse_bytes(const char* text) {
  if (text == nullptr) throw InvalidArgument("byte size: missing");
  const std::string_view s(text);
  if (s.empty()) bad_bytes(s, "empty");
  if (s.front() == '-') bad_bytes(s, "negative");
  size_t i = 0;
  size_t whole = 0;
  if (!is_digit(s[0])) bad_bytes(s, "not a number");
  for (; i < s.size() && is_digit(s[i]); ++i) {
    if (__builtin_mul_overflow(whole, size_t{10}, &whole) ||
        __builtin_add_overflow(whole, static_cast<size_t>(s[i] - '0'), &whole)) {
      bad_bytes(s, "too large");
    }
  }
  size_t frac = 0, frac_scale = 1;  // the decimals as frac / frac_scale
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (i == s.size() || !is_digit(s[i])) bad_bytes(s, "no digit after the decimal point");
    for (; i < s.size() && is_digit(s[i]); ++i) {
      if (frac_scale == 1'000'000'000) bad_bytes(s, "more than 9 decimals");
      frac = frac * 10 + static_cast<size_t>(s[i] - '0');
      frac_scale *= 10;
    }
  }
  const std::string_view unit = s.substr(i);
  size_t scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "KB") scale = 1'000;
  else if (unit == "MB") scale = 1'000'000;
  else if (unit == "GB") scale = 1'000'000'000;
  else if (unit == "KiB") scale = size_t{1} << 10;
  else if (unit == "MiB") scale = size_t{1} << 20;
  else if (unit == "GiB") scale = size_t{1} << 30;
  else bad_bytes(s, fmt::format("unknown unit '{}'", unit));
  size_t bytes = 0;
  // frac < 10^9 and scale ≤ 2^30, so frac * scale fits 64 bits.
  if (__builtin_mul_overflow(whole, scale, &bytes) || __builtin_add_overflow(bytes, frac * scale / frac_scale, &bytes)) {
    bad_bytes(s, "too large");
  }
  return bytes;
}

}  // namespace sparseserve::kvcache
