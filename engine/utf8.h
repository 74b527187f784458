// UTF-8 helpers for the tokenizer and detokenizer. Well-formedness follows Unicode Table 3-7
// (no overlongs, no surrogates, nothing above U+10FFFF). Replacement of ill-formed input follows the
// "maximal subpart" practice (Unicode §3.9, as Python's errors="replace" and Rust's
// from_utf8_lossy do): each maximal prefix of a valid sequence, or each lone bad byte, becomes one
// U+FFFD.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sparseserve::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the sequence a lead byte announces (1..4), or 0 when it cannot start one.
inline int sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Allowed range of the second byte after `lead` (the later bytes are always 0x80..0xBF).
inline bool second_byte_ok(unsigned char lead, unsigned char b) {
  switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: return b >= 0x80 && b <= 0xBF;
  }
}

// Examines the sequence starting at s[0] (s non-empty). Returns:
//   > 0: length of a complete well-formed sequence;
//   < 0: -(length of the maximal subpart), an ill-formed sequence that ends here;
//   0:   s is a valid but unfinished prefix of a sequence (more bytes could complete it).
inline int classify(std::string_view s) {
  const auto lead = static_cast<unsigned char>(s[0]);
  const int n = sequence_length(lead);
  if (n == 0) return -1;
  for (int k = 1; k < n; ++k) {
    if (static_cast<size_t>(k) >= s.size()) return 0;
    const auto b = static_cast<unsigned char>(s[k]);
    const bool ok = k == 1 ? second_byte_ok(lead, b) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return -k;
  }
  return n;
}

inline bool is_valid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const int c = classify(s.substr(i));
    if (c <= 0) return false;
    i += static_cast<size_t>(c);
  }
  return true;
}

// Appends to `out` the well-formed text of `in`, ill-formed parts replaced by U+FFFD. When `final`
// is false, a valid but unfinished sequence at the end is left unconsumed. Returns the number of
// bytes of `in` consumed.
inline size_t append_lossy(std::string_view in, std::string& out, bool final) {
  size_t i = 0;
  while (i < in.size()) {
    const int c = classify(in.substr(i));
    if (c > 0) {
      out.append(in.substr(i, static_cast<size_t>(c)));
      i += static_cast<size_t>(c);
    } else if (c < 0) {
      out.append(kReplacement);
      i += static_cast<size_t>(-c);
    } else if (final) {
      out.append(kReplacement);
      i = in.size();
    } else {
      break;
    }
  }
  return i;
}

inline std::string to_lossy(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  append_lossy(in, out, true);
  return out;
}

// Decodes the well-formed sequence of length n (from classify) at s[0].
inline uint32_t decode(std::string_view s, int n) {
  const auto b = [&](int k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[k])); };
  switch (n) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

// Appends the UTF-8 encoding of code point cp (cp <= 0x10FFFF, not a surrogate).
inline void append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace sparseserve::utf8
