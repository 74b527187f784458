// Synthetic GGUF metadata for tests: a GGUF v3 image holding key/values only (no tensors), enough
// for a Tokenizer, and the 256-character byte-level BPE alphabet (GPT-2's byte-to-unicode map).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/utf8.h"

namespace sparseserve {

// The byte-level alphabet: entry b is the character GPT-2's tokenizers write byte b as.
inline std::vector<std::string> byte_level_alphabet() {
  std::vector<std::string> v;
  for (int b = 0; b < 256; ++b) {
    uint32_t cp = static_cast<uint32_t>(b);
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    if (!printable) {
      int n = 0;
      for (int c = 0; c < b; ++c) {
        n += !((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE);
      }
      cp = 256 + static_cast<uint32_t>(n);
    }
    std::string s;
    utf8::append(s, cp);
    v.push_back(s);
  }
  return v;
}

// Minimal GGUF v3 image holding metadata only.
class GgufImage {
 public:
  void string(const std::string& key, const std::string& v) { header(key, 8); str(v); }
  void u32(const std::string& key, uint32_t v) { header(key, 4); raw(v); }
  void boolean(const std::string& key, bool v) { header(key, 7); kv_.push_back(v ? 1 : 0); }
  void strings(const std::string& key, const std::vector<std::string>& v) {
    header(key, 9);
    raw(uint32_t{8});
    raw(uint64_t{v.size()});
    for (const auto& s : v) str(s);
  }
  void i32s(const std::string& key, const std::vector<int32_t>& v) {
    header(key, 9);
    raw(uint32_t{5});
    raw(uint64_t{v.size()});
    for (int32_t x : v) raw(x);
  }
  Tokenizer load(const std::string& name) {
    std::string img = "GGUF";
    auto put = [&](auto x) { img.append(reinterpret_cast<const char*>(&x), sizeof x); };
    put(uint32_t{3});
    put(uint64_t{0});
    put(n_);
    img += kv_;
    img.resize((img.size() + 31) / 32 * 32, '\0');
    bytes_.resize(img.size());
    std::memcpy(bytes_.data(), img.data(), img.size());
    return Tokenizer::from_gguf(GgufFile::parse(bytes_, name));
  }

 private:
  template <typename T>
  void raw(T x) { kv_.append(reinterpret_cast<const char*>(&x), sizeof x); }
  void str(const std::string& s) { raw(uint64_t{s.size()}); kv_ += s; }
  void header(const std::string& key, uint32_t type) { str(key); raw(type); ++n_; }
  std::string kv_;
  uint64_t n_ = 0;
  std::vector<std::byte> bytes_;
};

}  // namespace sparseserve
