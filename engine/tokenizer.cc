#include "engine/tokenizer.h"

#include <algorithm>
#include <stdexcept>

#include "common/errors.h"
#include "engine/gguf.h"
#include "engine/nfc.h"
#include "engine/tokenizer_impl.h"
#include "engine/utf8.h"

namespace sparseserve {

// ---------------------------------------------------------------------------------------------
// AddedTokenMatcher

void AddedTokenMatcher::build(std::vector<Entry> entries) {
  std::erase_if(entries, [](const Entry& e) { return e.text.empty(); });
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.text.size() > b.text.size(); });
  entries_ = std::move(entries);
  for (auto& v : by_first_) v.clear();
  for (size_t i = 0; i < entries_.size(); ++i) {
    by_first_[static_cast<unsigned char>(entries_[i].text[0])].push_back(static_cast<uint32_t>(i));
  }
}

namespace {

// Unicode White_Space (Rust's char::is_whitespace, which HF's strip uses).
bool white_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Bytes of the whitespace run that starts at `at` (invalid UTF-8 ends it).
size_t white_space_after(std::string_view text, size_t at) {
  size_t end = at;
  while (end < text.size()) {
    const int n = utf8::classify(text.substr(end));
    if (n <= 0 || !white_space(utf8::decode(text.substr(end), n))) break;
    end += static_cast<size_t>(n);
  }
  return end - at;
}

// Where the whitespace run that ends at `at` starts, no earlier than `from`.
size_t white_space_before(std::string_view text, size_t from, size_t at) {
  size_t start = at;
  while (start > from) {
    size_t c = start - 1;  // the previous character's first byte
    while (c > from && start - c < 4 && (static_cast<unsigned char>(text[c]) & 0xC0) == 0x80) --c;
    const std::string_view ch = text.substr(c, start - c);
    const int n = utf8::classify(ch);
    if (n <= 0 || static_cast<size_t>(n) != ch.size() || !white_space(utf8::decode(ch, n))) break;
    start = c;
  }
  return start;
}

}  // namespace

std::optional<AddedTokenMatcher::Match> AddedTokenMatcher::find(std::string_view text, size_t from,
                                                                bool parse_special) const {
  if (entries_.empty()) return std::nullopt;
  for (size_t pos = from; pos < text.size(); ++pos) {
    for (uint32_t idx : by_first_[static_cast<unsigned char>(text[pos])]) {
      const Entry& e = entries_[idx];
      if (text.compare(pos, e.text.size(), e.text) != 0) continue;
      if (e.special && !parse_special) {  // ordinary text, searched no further (as HF skips the match)
        pos += e.text.size() - 1;
        break;
      }
      const size_t start = e.lstrip ? white_space_before(text, from, pos) : pos;
      const size_t end = pos + e.text.size() + (e.rstrip ? white_space_after(text, pos + e.text.size()) : 0);
      return Match{start, end - start, e.id};
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer::Impl

void Tokenizer::Impl::finish() {
  decoded.assign(tokens.size(), std::string());
  std::vector<AddedTokenMatcher::Entry> entries;
  for (size_t id = 0; id < tokens.size(); ++id) {
    // As HF's ByteLevel decoder: a token all of whose characters are byte-level decodes to those
    // bytes; any other token decodes to its text as stored.
    if (!byte_level_to_bytes(tokens[id], decoded[id])) decoded[id] = tokens[id];
    if (kinds[id] == TokenKind::kControl || kinds[id] == TokenKind::kUserDefined) {
      const uint8_t st = id < strip.size() ? strip[id] : 0;
      entries.push_back({tokens[id], static_cast<int32_t>(id), kinds[id] == TokenKind::kControl,
                         (st & kStripLeft) != 0, (st & kStripRight) != 0});
    }
  }
  added.build(std::move(entries));
}

void Tokenizer::Impl::encode_plain(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<std::string> pieces;
  std::string normalized;
  auto encode_valid = [&](std::string_view run) {
    if (run.empty()) return;
    if (nfc) {
      normalized = to_nfc(run);
      run = normalized;
    }
    pieces.clear();
    pre.split(run, pieces);
    for (const std::string& p : pieces) bpe->encode_word(p, out);
  };
  size_t run_start = 0;
  size_t i = 0;
  while (i < text.size()) {
    const int c = utf8::classify(text.substr(i));
    if (c > 0) {
      i += static_cast<size_t>(c);
      continue;
    }
    encode_valid(text.substr(run_start, i - run_start));
    const size_t bad = c < 0 ? static_cast<size_t>(-c) : text.size() - i;
    for (size_t k = 0; k < bad; ++k) bpe->encode_word(text.substr(i + k, 1), out);
    i += bad;
    run_start = i;
  }
  encode_valid(text.substr(run_start));
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_special && impl_->add_bos && impl_->bos >= 0) out.push_back(impl_->bos);
  size_t pos = 0;
  while (pos < text.size()) {
    const auto m = impl_->added.find(text, pos, parse_special);
    const size_t end = m ? m->pos : text.size();
    impl_->encode_plain(text.substr(pos, end - pos), out);
    if (!m) break;
    out.push_back(m->id);
    pos = m->pos + m->len;
  }
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      throw InvalidArgument("token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                            std::to_string(vocab_size() - 1) + ")");
    }
    if (skip_special && impl_->kinds[id] == TokenKind::kControl) continue;
    out.append(impl_->decoded[id]);
  }
  return out;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->tokens.size()); }

void Tokenizer::pad_vocab(int32_t n) {
  for (int32_t id = vocab_size(); id < n; ++id) {
    impl_->tokens.emplace_back();  // no text: token_id never finds it, encode never produces it
    impl_->kinds.push_back(TokenKind::kUnused);
    impl_->decoded.emplace_back();
  }
}
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }

bool Tokenizer::is_special(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return false;
  const TokenKind k = impl_->kinds[id];
  return k == TokenKind::kControl || k == TokenKind::kUserDefined;
}

int32_t Tokenizer::token_id(std::string_view token_text) const {
  return impl_->bpe->find(token_text);  // built over every id, added tokens included
}

const std::string& Tokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw InvalidArgument("token id " + std::to_string(id) + " is outside the vocabulary");
  }
  return impl_->tokens[id];
}

// ---------------------------------------------------------------------------------------------
// GGUF loader

namespace {

// Pre-tokenizer of a GGUF `tokenizer.ggml.pre` kind, as llama.cpp and HF define it, and whether the
// family's tokenizer.json normalizes to NFC first (Qwen2's does; transformers' GGUF converter, so
// vLLM serving the GGUF, keeps it; llama.cpp does not). Returns false for an unknown kind.
bool configure_pre(std::string_view pre, PreTokenizer& p, bool& ignore_merges, bool& default_add_bos, bool& nfc) {
  using B = PreTokenizer::Behavior;
  ignore_merges = false;
  default_add_bos = false;
  nfc = false;
  if (pre.empty() || pre == "default" || pre == "gpt2" || pre == "gpt-2") {
    p.add_byte_level(false, true);
  } else if (pre == "smollm" || pre == "starcoder" || pre == "refact") {
    p.add_digits(true);
    p.add_byte_level(false, true);
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    p.add_split(kLlama3Pattern, B::kIsolated, false);
    p.add_byte_level(false, false);
    ignore_merges = true;
    default_add_bos = true;
  } else if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
    p.add_split(kQwen2Pattern, B::kIsolated, false);
    p.add_byte_level(false, false);
    nfc = true;
  } else {
    return false;
  }
  return true;
}

template <typename F>
auto with_key(const GgufFile& f, const std::string& key, F&& fn) {
  try {
    return fn();
  } catch (const ModelFileError&) {
    throw;
  } catch (const Error& e) {
    throw ModelFileError(f.path(), key + ": " + e.what());
  }
}

std::vector<std::string> string_array(const GgufFile& f, const std::string& key) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) throw ModelFileError(f.path(), "missing key " + key);
  return with_key(f, key, [&] {
    std::vector<std::string> out;
    const auto& arr = v->as_array();
    out.reserve(arr.size());
    for (const GgufValue& e : arr) out.push_back(e.as_string());
    return out;
  });
}

int32_t optional_token_id(const GgufFile& f, const std::string& key, size_t n_tokens) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) return -1;
  const int64_t id = with_key(f, key, [&] { return v->as_int(); });
  if (id < 0 || static_cast<uint64_t>(id) >= n_tokens) {
    throw ModelFileError(f.path(), key + ": token id " + std::to_string(id) +
                                       " is outside the vocabulary of " +
                                       std::to_string(n_tokens) + " tokens");
  }
  return static_cast<int32_t>(id);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& gguf) {
  const std::string& file = gguf.path();
  auto impl = std::make_unique<Impl>();
  impl->source = file;

  const GgufValue* model_v = gguf.find("tokenizer.ggml.model");
  if (model_v == nullptr) throw ModelFileError(file, "missing key tokenizer.ggml.model");
  const std::string model = with_key(gguf, "tokenizer.ggml.model", [&] {
    return model_v->as_string();
  });
  if (model != "gpt2") {
    throw ModelFileError(file, "tokenizer.ggml.model: '" + model +
                                   "' is not supported (only byte-level BPE, 'gpt2')");
  }

  impl->tokens = string_array(gguf, "tokenizer.ggml.tokens");
  const size_t n = impl->tokens.size();
  if (n == 0) throw ModelFileError(file, "tokenizer.ggml.tokens: empty vocabulary");
  if (n > static_cast<size_t>(INT32_MAX)) {
    throw ModelFileError(file, "tokenizer.ggml.tokens: vocabulary too large");
  }

  impl->kinds.assign(n, TokenKind::kNormal);
  if (const GgufValue* types = gguf.find("tokenizer.ggml.token_type")) {
    with_key(gguf, "tokenizer.ggml.token_type", [&] {
      const auto& arr = types->as_array();
      if (arr.size() != n) {
        throw ModelFileError(file, "tokenizer.ggml.token_type: " + std::to_string(arr.size()) +
                                       " entries for " + std::to_string(n) + " tokens");
      }
      for (size_t i = 0; i < n; ++i) {
        const int64_t t = arr[i].as_int();
        if (t < 1 || t > 6) {
          throw ModelFileError(file, "tokenizer.ggml.token_type: unknown type " +
                                         std::to_string(t) + " for token " + std::to_string(i));
        }
        impl->kinds[i] = static_cast<TokenKind>(t);
      }
    });
  }

  const std::vector<std::string> merge_strings = string_array(gguf, "tokenizer.ggml.merges");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(merge_strings.size());
  for (size_t i = 0; i < merge_strings.size(); ++i) {
    const std::string& m = merge_strings[i];
    const size_t sp = m.find(' ', 1);
    if (sp == std::string::npos || sp + 1 >= m.size()) {
      throw ModelFileError(file, "tokenizer.ggml.merges: entry " + std::to_string(i) + " ('" + m +
                                     "') is not two tokens separated by a space");
    }
    merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
  }

  std::string pre;
  if (const GgufValue* v = gguf.find("tokenizer.ggml.pre")) {
    pre = with_key(gguf, "tokenizer.ggml.pre", [&] { return v->as_string(); });
  }
  bool ignore_merges = false;
  bool default_add_bos = false;
  if (!configure_pre(pre, impl->pre, ignore_merges, default_add_bos, impl->nfc)) {
    throw ModelFileError(file, "tokenizer.ggml.pre: unsupported pre-tokenizer '" + pre + "'");
  }

  const int32_t unk = optional_token_id(gguf, "tokenizer.ggml.unknown_token_id", n);
  (void)unk;  // byte-level vocabularies hold every byte; unmapped bytes cannot occur
  try {
    impl->bpe = std::make_unique<BpeModel>(impl->tokens, merges, ignore_merges, -1);
  } catch (const std::invalid_argument& e) {
    throw ModelFileError(file, std::string("tokenizer.ggml.merges: ") + e.what());
  }

  impl->bos = optional_token_id(gguf, "tokenizer.ggml.bos_token_id", n);
  impl->eos = optional_token_id(gguf, "tokenizer.ggml.eos_token_id", n);
  impl->add_bos = default_add_bos;
  if (const GgufValue* v = gguf.find("tokenizer.ggml.add_bos_token")) {
    impl->add_bos = with_key(gguf, "tokenizer.ggml.add_bos_token", [&] { return v->as_bool(); });
  }
  impl->finish();
  return Tokenizer(std::move(impl));
}

// ---------------------------------------------------------------------------------------------
// IncrementalDetokenizer

std::string IncrementalDetokenizer::push(int32_t id) {
  const int32_t one[1] = {id};
  pending_ += tok_->decode(one, skip_special_);
  std::string out;
  const size_t used = utf8::append_lossy(pending_, out, /*final=*/false);
  pending_.erase(0, used);
  return out;
}

std::string IncrementalDetokenizer::flush() {
  std::string out;
  utf8::append_lossy(pending_, out, /*final=*/true);
  pending_.clear();
  return out;
}

}  // namespace sparseserve
