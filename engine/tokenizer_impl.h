// Internals of Tokenizer shared by its loaders (tokenizer.cc: GGUF, tokenizer_json.cc: HF JSON).
// Not part of the public interface.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/bpe.h"
#include "engine/pretokenizer.h"
#include "engine/tokenizer.h"

namespace sparseserve {

// GGUF tokenizer.ggml.token_type values.
enum class TokenKind : uint8_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // special token (HF added token with special = true)
  kUserDefined = 4,  // added token matched in text (HF added token with special = false)
  kUnused = 5,
  kByte = 6,
};

// Finds added tokens in text before BPE runs: leftmost match first, the longest among those
// starting at the same byte (HF tokenizers' AddedVocabulary order).
class AddedTokenMatcher {
 public:
  struct Entry {
    std::string text;
    int32_t id;
    bool special;         // control token: matched only when parse_special
    bool lstrip = false;  // the match takes the whitespace before it (tokenizer.json's lstrip) ...
    bool rstrip = false;  // ... and after it (rstrip): that whitespace is not encoded
  };
  struct Match {
    size_t pos;
    size_t len;
    int32_t id;
  };
  void build(std::vector<Entry> entries);
  // The leftmost-longest added token at or after `from` (a special one's text, when !parse_special, is
  // ordinary text that no other added token matches inside), its match widened over whitespace (Unicode
  // White_Space, as HF's char::is_whitespace) by its lstrip (down to `from`, the end of the previous
  // match) and rstrip, as HF's AddedVocabulary widens it.
  std::optional<Match> find(std::string_view text, size_t from, bool parse_special) const;

 private:
  std::vector<Entry> entries_;                          // longest first
  std::array<std::vector<uint32_t>, 256> by_first_{};  // first byte -> indices into entries_
};

struct Tokenizer::Impl {
  std::string source;                // file the tokenizer came from (error messages)
  std::vector<std::string> tokens;   // id -> text as stored (byte-level form)
  std::vector<TokenKind> kinds;      // id -> kind
  std::vector<std::string> decoded;  // id -> raw bytes it decodes to
  std::unique_ptr<BpeModel> bpe;
  PreTokenizer pre;
  AddedTokenMatcher added;
  int32_t bos = -1;
  int32_t eos = -1;
  bool add_bos = false;
  bool nfc = false;                  // NFC before pre-tokenizing (tokenizer.json normalizer NFC)

  std::vector<uint8_t> strip;        // id -> kStripLeft | kStripRight (tokenizer.json lstrip / rstrip); may be empty
  static constexpr uint8_t kStripLeft = 1, kStripRight = 2;

  // Fills `decoded` and the added-token matcher from tokens/kinds. Call once loading is done.
  void finish();
  // Encodes text that holds no added token: invalid UTF-8 bytes become single-byte pieces.
  void encode_plain(std::string_view text, std::vector<int32_t>& out) const;
};

}  // namespace sparseserve
