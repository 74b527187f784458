// Byte-level BPE tokenizer (GPT-2 / Llama-3 / Qwen2 / SmolLM style), built from GGUF metadata
// (tokenizer.ggml.*) or a Hugging Face tokenizer.json. Pre-tokenization regexes run through PCRE2;
// added/special tokens are matched before BPE.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sparseserve {

class GgufFile;

class Tokenizer {
 public:
  static Tokenizer from_gguf(const GgufFile& gguf);          // throws ModelFileError
  // tokenizer.json (byte-level BPE; see tokenizer_json.cc for what is supported). BOS/EOS texts
  // also come from a tokenizer_config.json beside it, when present. Throws ModelFileError.
  static Tokenizer from_hf_json(const std::string& path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Encodes text. add_special: prepend BOS when the model declares it (add_bos_token).
  // parse_special: special/added tokens written in the text become their ids; otherwise they are
  // encoded as plain text (user-defined added tokens are matched either way). Invalid UTF-8 is
  // encoded byte by byte, never rejected, so decode() restores it; a byte (or character) whose
  // byte-level form has no token in the vocabulary is dropped, as HF tokenizers drops it.
  std::vector<int32_t> encode(std::string_view text, bool add_special = true,
                              bool parse_special = true) const;
  // Decodes ids to bytes (may be invalid UTF-8 when cut mid-character). skip_special drops
  // control/special tokens. Throws InvalidArgument for an id outside the vocabulary.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  int32_t vocab_size() const;
  // Ids vocab_size() .. n − 1 become unused tokens that decode to nothing and that encode never
  // produces. For a model whose output layer has more rows than its tokenizer has tokens (Qwen2.5:
  // 151936 rows, 151665 tokens): it may sample those ids, and HF tokenizers drops them in decoding.
  void pad_vocab(int32_t n);
  int32_t bos_id() const;            // -1 when none
  int32_t eos_id() const;            // -1 when none
  bool add_bos() const;
  bool is_special(int32_t id) const; // control or user-defined added token
  int32_t token_id(std::string_view token_text) const;  // exact vocabulary entry, -1 when absent
  const std::string& token_text(int32_t id) const;      // vocabulary entry as stored

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Streaming detokenizer: push ids one at a time, get the text that is complete so far.
// Never returns a broken UTF-8 sequence: bytes of an unfinished character are held back until the
// character completes; invalid bytes become U+FFFD once they cannot start a valid sequence.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tok, bool skip_special = true)
      : tok_(&tok), skip_special_(skip_special) {}
  std::string push(int32_t id);
  std::string flush();  // end of stream: whatever is held back, with invalid bytes as U+FFFD

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace sparseserve
