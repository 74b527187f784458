// Tokenizer::from_hf_json: a Hugging Face tokenizer.json with a byte-level BPE model.
// Supported: model BPE (merges as "a b" or ["a", "b"], ignore_merges, unk_token); added_tokens (with
// lstrip / rstrip; single_word is refused);
// normalizer null or NFC (applied to the text between added tokens, as HF applies it: engine/nfc.h);
// pre_tokenizer Sequence / Split (Regex or String pattern, every behavior, invert) / Digits /
// ByteLevel; post_processor TemplateProcessing (a leading special token is the BOS), ByteLevel,
// Sequence of those. BOS/EOS texts also come from a sibling tokenizer_config.json when present.
#include <algorithm>
#include <filesystem>
#include <system_error>

#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "engine/json_file.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_impl.h"

namespace sparseserve {

namespace {

using nlohmann::json;

class JsonReader {
 public:
  explicit JsonReader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& problem) const {
    throw ModelFileError(file_, key + ": " + problem);
  }
  const json& field(const json& obj, const char* name, const std::string& key) const {
    if (!obj.is_object() || !obj.contains(name)) fail(key, std::string("missing '") + name + "'");
    return obj.at(name);
  }
  std::string string_field(const json& obj, const char* name, const std::string& key) const {
    const json& v = field(obj, name, key);
    if (!v.is_string()) fail(key + "." + name, "expected a string");
    return v.get<std::string>();
  }
  bool bool_field(const json& obj, const char* name, bool fallback, const std::string& key) const {
    if (!obj.is_object() || !obj.contains(name) || obj.at(name).is_null()) return fallback;
    if (!obj.at(name).is_boolean()) fail(key + "." + name, "expected a boolean");
    return obj.at(name).get<bool>();
  }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
};

PreTokenizer::Behavior parse_behavior(const JsonReader& r, const std::string& s,
                                      const std::string& key) {
  using B = PreTokenizer::Behavior;
  if (s == "Isolated") return B::kIsolated;
  if (s == "Removed") return B::kRemoved;
  if (s == "MergedWithPrevious") return B::kMergedWithPrevious;
  if (s == "MergedWithNext") return B::kMergedWithNext;
  if (s == "Contiguous") return B::kContiguous;
  r.fail(key, "unknown split behavior '" + s + "'");
}

std::string escape_literal(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// Sequences nest in real files one or two deep; a bound keeps a hostile file from recursing the
// parser off its stack (HF's JSON reader stops at 128 levels of any kind).
constexpr int kMaxSequenceDepth = 16;

void parse_pre_tokenizer(const JsonReader& r, const json& node, const std::string& key, PreTokenizer& pre,
                         int depth = 0) {
  if (node.is_null()) return;
  const std::string type = r.string_field(node, "type", key);
  try {
    if (type == "Sequence") {
      if (depth >= kMaxSequenceDepth) r.fail(key, "Sequences nested more than " + std::to_string(kMaxSequenceDepth) + " deep");
      const json& list = r.field(node, "pretokenizers", key);
      if (!list.is_array()) r.fail(key + ".pretokenizers", "expected an array");
      for (size_t i = 0; i < list.size(); ++i) {
        parse_pre_tokenizer(r, list[i], key + ".pretokenizers[" + std::to_string(i) + "]", pre, depth + 1);
      }
    } else if (type == "Split") {
      const json& pattern = r.field(node, "pattern", key);
      std::string regex;
      if (pattern.contains("Regex") && pattern.at("Regex").is_string()) {
        regex = pattern.at("Regex").get<std::string>();
      } else if (pattern.contains("String") && pattern.at("String").is_string()) {
        regex = escape_literal(pattern.at("String").get<std::string>());
      } else {
        r.fail(key + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
      }
      const auto behavior = parse_behavior(r, r.string_field(node, "behavior", key), key);
      pre.add_split(regex, behavior, r.bool_field(node, "invert", false, key));
    } else if (type == "Digits") {
      pre.add_digits(r.bool_field(node, "individual_digits", false, key));
    } else if (type == "ByteLevel") {
      pre.add_byte_level(r.bool_field(node, "add_prefix_space", true, key),
                         r.bool_field(node, "use_regex", true, key));
    } else {
      r.fail(key, "unsupported pre-tokenizer type '" + type + "'");
    }
  } catch (const std::invalid_argument& e) {
    r.fail(key, e.what());
  }
}

// A BOS the post-processor prepends to a single sequence: the token text, or empty.
std::string parse_post_processor(const JsonReader& r, const json& node, const std::string& key, int depth = 0) {
  if (node.is_null()) return {};
  const std::string type = r.string_field(node, "type", key);
  if (type == "ByteLevel") return {};  // offsets only
  if (type == "Sequence") {
    if (depth >= kMaxSequenceDepth) r.fail(key, "Sequences nested more than " + std::to_string(kMaxSequenceDepth) + " deep");
    const json& list = r.field(node, "processors", key);
    std::string bos;
    for (size_t i = 0; list.is_array() && i < list.size(); ++i) {
      std::string b = parse_post_processor(r, list[i], key + ".processors[" + std::to_string(i) + "]", depth + 1);
      if (!b.empty()) bos = std::move(b);
    }
    return bos;
  }
  if (type == "TemplateProcessing") {
    const json& single = r.field(node, "single", key);
    if (!single.is_array() || single.empty()) r.fail(key + ".single", "expected a non-empty array");
    for (size_t i = 1; i < single.size(); ++i) {
      if (single[i].contains("SpecialToken")) {
        r.fail(key + ".single", "only a leading special token (BOS) is supported");
      }
    }
    if (!single[0].contains("SpecialToken")) return {};
    return r.string_field(single[0].at("SpecialToken"), "id", key + ".single[0].SpecialToken");
  }
  r.fail(key, "unsupported post-processor type '" + type + "'");
}

// bos_token / eos_token of tokenizer_config.json: a string or {"content": ...}.
std::string config_token(const json& cfg, const char* name) {
  if (!cfg.is_object() || !cfg.contains(name)) return {};
  const json& v = cfg.at(name);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string()) {
    return v.at("content").get<std::string>();
  }
  return {};
}

}  // namespace

Tokenizer Tokenizer::from_hf_json(const std::string& path) {
  const json doc = read_json_file(path, kJsonTokenizerMaxBytes);
  const JsonReader r(path);
  auto impl = std::make_unique<Impl>();
  impl->source = path;

  const json& model = r.field(doc, "model", "model");
  if (model.contains("type") && model.at("type") != "BPE") {
    r.fail("model.type", "only BPE models are supported");
  }
  if (r.bool_field(model, "byte_fallback", false, "model")) {
    r.fail("model.byte_fallback", "byte-fallback BPE is not supported (byte-level BPE only)");
  }
  const json& vocab = r.field(model, "vocab", "model");
  if (!vocab.is_object()) r.fail("model.vocab", "expected an object");

  // id -> text over the model vocabulary and the added tokens; ids must be dense. A few holes are
  // taken (ids never produced); ids far past the entries' count are refused before anything is sized
  // by them (a 150-byte file naming id 2^24 - 1 took 1.2 GB).
  const size_t entries = vocab.size() + (doc.contains("added_tokens") && doc.at("added_tokens").is_array()
                                              ? doc.at("added_tokens").size() : 0);
  const int64_t id_limit = std::min<int64_t>(int64_t{1} << 24, 2 * static_cast<int64_t>(entries) + 1024);
  std::vector<std::string> tokens;
  std::vector<bool> present;
  std::vector<TokenKind> kinds;
  auto place = [&](int64_t id, const std::string& text, TokenKind kind, const std::string& key) {
    if (id < 0 || id >= id_limit) {
      r.fail(key, "token id " + std::to_string(id) + " out of range (the file lists " + std::to_string(entries) +
                      " tokens)");
    }
    const auto i = static_cast<size_t>(id);
    if (i >= tokens.size()) {
      tokens.resize(i + 1);
      present.resize(i + 1, false);
      kinds.resize(i + 1, TokenKind::kNormal);
    }
    tokens[i] = text;
    present[i] = true;
    if (kind != TokenKind::kNormal) kinds[i] = kind;
  };
  for (const auto& [text, id] : vocab.items()) {
    if (!id.is_number_integer()) r.fail("model.vocab", "id of '" + text + "' is not an integer");
    place(id.get<int64_t>(), text, TokenKind::kNormal, "model.vocab");
  }
  if (doc.contains("added_tokens") && doc.at("added_tokens").is_array()) {
    const json& added = doc.at("added_tokens");
    for (size_t i = 0; i < added.size(); ++i) {
      const std::string key = "added_tokens[" + std::to_string(i) + "]";
      const json& id = r.field(added[i], "id", key);
      if (!id.is_number_integer()) r.fail(key + ".id", "expected an integer");
      const bool special = r.bool_field(added[i], "special", false, key);
      place(id.get<int64_t>(), r.string_field(added[i], "content", key),
            special ? TokenKind::kControl : TokenKind::kUserDefined, key);
      const uint8_t st = (r.bool_field(added[i], "lstrip", false, key) ? Impl::kStripLeft : 0) |
                         (r.bool_field(added[i], "rstrip", false, key) ? Impl::kStripRight : 0);
      if (st != 0) {
        if (impl->strip.size() < tokens.size()) impl->strip.resize(tokens.size(), 0);
        impl->strip[static_cast<size_t>(id.get<int64_t>())] = st;
      }
      if (r.bool_field(added[i], "single_word", false, key)) {
        r.fail(key + ".single_word", "matching an added token only as a whole word is not supported");
      }
    }
  }
  if (tokens.empty()) r.fail("model.vocab", "empty vocabulary");
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!present[i]) kinds[i] = TokenKind::kUnused;  // a hole in the id space: never produced
  }

  std::vector<std::pair<std::string, std::string>> merges;
  const json& merges_json = r.field(model, "merges", "model");
  if (!merges_json.is_array()) r.fail("model.merges", "expected an array");
  merges.reserve(merges_json.size());
  for (size_t i = 0; i < merges_json.size(); ++i) {
    const json& m = merges_json[i];
    const std::string key = "model.merges[" + std::to_string(i) + "]";
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ', 1);
      if (sp == std::string::npos || sp + 1 >= s.size()) r.fail(key, "expected 'a b'");
      merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      r.fail(key, "expected \"a b\" or [\"a\", \"b\"]");
    }
  }

  if (doc.contains("normalizer") && !doc.at("normalizer").is_null()) {
    const std::string type = r.string_field(doc.at("normalizer"), "type", "normalizer");
    if (type != "NFC") r.fail("normalizer", "unsupported normalizer type '" + type + "'");
    impl->nfc = true;
  }
  static const json kNull;  // an absent section; the present ones are read in place, never copied
  parse_pre_tokenizer(r, doc.contains("pre_tokenizer") ? doc.at("pre_tokenizer") : kNull, "pre_tokenizer", impl->pre);
  if (!impl->pre.has_byte_level()) {
    r.fail("pre_tokenizer", "no ByteLevel step: not a byte-level BPE tokenizer");
  }

  int32_t unk = -1;
  if (model.contains("unk_token") && model.at("unk_token").is_string()) {
    const auto it = std::find(tokens.begin(), tokens.end(), model.at("unk_token").get<std::string>());
    if (it != tokens.end()) unk = static_cast<int32_t>(it - tokens.begin());
  }
  impl->tokens = std::move(tokens);
  impl->kinds = std::move(kinds);
  try {
    impl->bpe = std::make_unique<BpeModel>(
        impl->tokens, merges, r.bool_field(model, "ignore_merges", false, "model"), unk,
        BpeModel::RepeatedMerge::kLastRankWins);
  } catch (const std::invalid_argument& e) {
    r.fail("model.merges", e.what());
  }

  const std::string bos_text =
      parse_post_processor(r, doc.contains("post_processor") ? doc.at("post_processor") : kNull, "post_processor");
  if (!bos_text.empty()) {
    impl->bos = impl->bpe->find(bos_text);
    if (impl->bos < 0) r.fail("post_processor", "BOS token '" + bos_text + "' is not in the vocabulary");
    impl->add_bos = true;
  }
  const auto cfg_path = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::exists(cfg_path, ec)) {
    const json cfg = read_json_file(cfg_path.string(), kJsonListingMaxBytes);
    if (impl->bos < 0) impl->bos = impl->bpe->find(config_token(cfg, "bos_token"));
    impl->eos = impl->bpe->find(config_token(cfg, "eos_token"));
  }
  impl->finish();
  return Tokenizer(std::move(impl));
}

}  // namespace sparseserve
