// configs/models/<name>.yaml -> ModelProfiles (schema and errors: engine/model_profiles.h).
//
// How this works: a Section wraps one YAML mapping, rejects keys it does not know (and duplicates)
// and keeps every entry with the line to blame; typed getters turn entries into checked values.
// Every error carries the 1-based line of the node at fault (of its parent when the node itself
// is absent). Head pattern files are read once per path, however many profiles name them.
#include "engine/model_profiles.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include "common/errors.h"
#include "common/mapped_file.h"
#include "kvcache/head_pattern.h"

namespace sparseserve {
namespace {

namespace fs = std::filesystem;
using kvcache::HeadRole;
using kvcache::HeadRoles;
using kvcache::SparsityProfile;

constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

bool valid_profile_name(const std::string& name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

// One key/value pair of a mapping; `mark` is the value's position, else the key's.
struct Entry {
  std::string key;
  YAML::Node value;
  YAML::Mark mark;
};

class Loader;

// A YAML mapping with a known set of keys. A null node (`key:` with no value) reads as empty.
class Section {
 public:
  Section(const Loader& loader, const YAML::Node& node, const YAML::Mark& at, std::string what,
          std::vector<std::string> allowed);
  const Entry* find(const std::string& key) const {
    for (const Entry& e : entries_) {
      if (e.key == key) return &e;
    }
    return nullptr;
  }
  const std::vector<Entry>& entries() const { return entries_; }
  const YAML::Mark& mark() const { return mark_; }
  const std::string& what() const { return what_; }

 private:
  std::string what_;
  YAML::Mark mark_;
  std::vector<Entry> entries_;
};

class Loader {
 public:
  Loader(std::string path, int32_t n_layers, int32_t n_kv_heads)
      : path_(std::move(path)), n_layers_(n_layers), n_kv_heads_(n_kv_heads) {}

  ModelProfiles load();

  [[noreturn]] void fail(const YAML::Mark& at, const std::string& problem) const {
    const int64_t line = at.is_null() ? 1 : int64_t{at.line} + 1;
    throw ModelFileError(path_, "line " + std::to_string(line) + ": " + problem);
  }

 private:
  std::string scalar(const Entry& e, const std::string& what) const;
  int64_t integer(const Entry& e, const std::string& what) const;
  int32_t int_in(const Entry& e, const std::string& what, int64_t lo, int64_t hi) const;
  double number(const Entry& e, const std::string& what) const;
  double fraction(const Entry& e, const std::string& what) const;  // in (0, 1]
  bool on_off(const Entry& e, const std::string& what) const;

  SparsityProfile profile(const Entry& e);  // not const: heads() caches patterns
  HeadRoles heads(const Section& s);
  kvcache::StreamingWindow streaming(const Section& s) const;
  kvcache::DecodeSelection decode(const Section& s, int32_t sink_tokens) const;
  kvcache::PrefillSparsity prefill(const Section& s) const;

  std::string path_;
  int32_t n_layers_, n_kv_heads_;
  ModelProfiles out_;
  std::map<std::string, kvcache::HeadGates> patterns_;  // resolved path -> gates
};

Section::Section(const Loader& loader, const YAML::Node& node, const YAML::Mark& at,
                 std::string what, std::vector<std::string> allowed)
    : what_(std::move(what)), mark_(node.Mark().is_null() ? at : node.Mark()) {
  if (node.IsNull()) return;
  if (!node.IsMap()) loader.fail(mark_, what_ + " must be a mapping");
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;  // copies: the iterator hands out temporaries
    const YAML::Node value = it->second;
    if (!key.IsScalar()) loader.fail(key.Mark(), what_ + ": keys must be plain names");
    const std::string& name = key.Scalar();
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      loader.fail(key.Mark(), "unknown key '" + name + "' in " + what_ + " (known: " +
                                  join(allowed) + ")");
    }
    if (!seen.insert(name).second) {
      loader.fail(key.Mark(), "duplicate key '" + name + "' in " + what_);
    }
    const YAML::Mark value_mark = value.Mark();
    entries_.push_back({name, value, value_mark.is_null() ? key.Mark() : value_mark});
  }
}

std::string Loader::scalar(const Entry& e, const std::string& what) const {
  if (!e.value.IsScalar()) fail(e.mark, what + " must be a single value");
  return e.value.Scalar();
}

int64_t Loader::integer(const Entry& e, const std::string& what) const {
  const std::string text = scalar(e, what);
  try {
    return e.value.as<int64_t>();
  } catch (const YAML::Exception&) {
    fail(e.mark, what + " must be an integer, got '" + text + "'");
  }
}

int32_t Loader::int_in(const Entry& e, const std::string& what, int64_t lo, int64_t hi) const {
  const int64_t v = integer(e, what);
  if (v < lo || v > hi) {
    fail(e.mark, what + (hi == kInt32Max ? " must be ≥ " + std::to_string(lo)
                                         : " must be in [" + std::to_string(lo) + ", " +
                                               std::to_string(hi) + "]") +
                     ", got " + std::to_string(v));
  }
  return static_cast<int32_t>(v);
}

double Loader::number(const Entry& e, const std::string& what) const {
  const std::string text = scalar(e, what);
  double v = 0.0;
  try {
    v = e.value.as<double>();
  } catch (const YAML::Exception&) {
    fail(e.mark, what + " must be a number, got '" + text + "'");
  }
  if (!std::isfinite(v)) fail(e.mark, what + " must be finite, got '" + text + "'");
  return v;
}

double Loader::fraction(const Entry& e, const std::string& what) const {
  const double v = number(e, what);
  if (!(v > 0.0 && v <= 1.0)) fail(e.mark, what + " must be in (0, 1], got " + scalar(e, what));
  return v;
}

bool Loader::on_off(const Entry& e, const std::string& what) const {
  const std::string text = scalar(e, what);
  try {
    return e.value.as<bool>();
  } catch (const YAML::Exception&) {
    fail(e.mark, what + " must be on or off, got '" + text + "'");
  }
}

ModelProfiles Loader::load() {
  if (n_layers_ < 1 || n_kv_heads_ < 1) {
    throw InvalidArgument("model profiles need n_layers ≥ 1 and n_kv_heads ≥ 1, got " +
                          std::to_string(n_layers_) + " and " + std::to_string(n_kv_heads_));
  }
  const std::string text = read_config_file(path_);  // a folder, a FIFO, an unreadable file: ModelFileError
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(text);
  } catch (const YAML::DeepRecursion& e) {  // yaml-cpp's own message for it is "bad file"
    fail(e.mark, "not valid YAML: nested too deeply (" + std::to_string(e.depth()) + " levels)");
  } catch (const YAML::ParserException& e) {
    fail(e.mark, "not valid YAML: " + e.msg);
  }
  if (docs.size() > 1) fail(docs[1].Mark(), "a second YAML document (---): one file describes one model");
  const YAML::Node root = docs.empty() ? YAML::Node() : docs.front();
  if (!root.IsMap()) fail(root.Mark(), "the top level must be a mapping with at least 'name'");
  const Section top(*this, root, root.Mark(), "the model file",
                    {"name", "chat_template", "kv_cache", "default_profile", "profiles"});

  const Entry* name = top.find("name");
  if (name == nullptr) fail(top.mark(), "'name' is missing");
  out_.name = scalar(*name, "name");
  if (out_.name.empty()) fail(name->mark, "name must not be empty");

  if (const Entry* e = top.find("chat_template")) {
    out_.chat_template = scalar(*e, "chat_template");
    if (out_.chat_template != "auto" && out_.chat_template != "chatml" &&
        out_.chat_template != "llama3") {
      fail(e->mark,
           "chat_template must be auto, chatml or llama3, got '" + out_.chat_template + "'");
    }
  }

  if (const Entry* e = top.find("kv_cache")) {
    const Section kv(*this, e->value, e->mark, "kv_cache", {"page_tokens", "logical_page_tokens"});
    if (const Entry* f = kv.find("page_tokens")) {
      out_.kv_cache.page_tokens = int_in(*f, "kv_cache.page_tokens", 1, kInt32Max);
    }
    if (const Entry* f = kv.find("logical_page_tokens")) {
      out_.kv_cache.logical_page_tokens = int_in(*f, "kv_cache.logical_page_tokens", 1, kInt32Max);
    }
    try {
      out_.kv_cache.validate();
    } catch (const InvalidArgument& err) {
      fail(kv.mark(), std::string("kv_cache: ") + err.what());
    }
  }

  if (const Entry* e = top.find("profiles")) {
    const Section all(*this, e->value, e->mark, "profiles", {});
    for (const Entry& p : all.entries()) {
      if (!valid_profile_name(p.key)) {
        fail(p.mark, "profile name '" + p.key + "' must be letters, digits, '.', '_' or '-'");
      }
      out_.profiles.insert_or_assign(p.key, profile(p));
    }
  }
  if (out_.profiles.count("dense") == 0) {
    SparsityProfile dense = SparsityProfile::dense(n_layers_, n_kv_heads_);
    dense.name = "dense";
    out_.profiles.insert_or_assign("dense", std::move(dense));
  }

  if (const Entry* e = top.find("default_profile")) {
    out_.default_profile = scalar(*e, "default_profile");
    if (out_.profiles.count(out_.default_profile) == 0) {
      std::vector<std::string> known;
      for (const auto& [k, v] : out_.profiles) known.push_back(k);
      fail(e->mark, "default_profile '" + out_.default_profile + "' is not a profile (known: " +
                        join(known) + ")");
    }
  }
  return std::move(out_);
}

SparsityProfile Loader::profile(const Entry& e) {
  const std::string ctx = "profile '" + e.key + "'";
  const Section s(*this, e.value, e.mark, ctx, {"heads", "streaming", "decode", "prefill"});
  if (e.key == "dense") {
    if (!s.entries().empty()) {
      fail(s.entries().front().mark,
           "profile 'dense' is reserved for dense attention and must be {}");
    }
    SparsityProfile dense = SparsityProfile::dense(n_layers_, n_kv_heads_);
    dense.name = "dense";
    return dense;
  }
  const Entry* h = s.find("heads");
  const Entry* st = s.find("streaming");
  if (st != nullptr && h == nullptr) {
    fail(st->mark, ctx + ": streaming needs a heads section (without it no head streams)");
  }
  HeadRoles roles =
      h == nullptr ? HeadRoles::all_retrieval(n_layers_, n_kv_heads_)
                   : heads(Section(*this, h->value, h->mark, ctx + " heads",
                                   {"pattern", "retrieval_ratio", "threshold", "global_ratio"}));
  std::optional<kvcache::StreamingWindow> window;
  const kvcache::StreamingWindow w =
      st == nullptr ? kvcache::StreamingWindow{}
                    : streaming(Section(*this, st->value, st->mark, ctx + " streaming", {"sink_tokens", "local_tokens"}));
  if (h != nullptr && roles.count(HeadRole::kStreaming) > 0) window = w;
  kvcache::DecodeSelection dec;
  if (const Entry* d = s.find("decode")) {
    dec = decode(Section(*this, d->value, d->mark, ctx + " decode",
                         {"selection", "token_budget", "sink_tokens", "reselect_interval", "dense_layers"}),
                 w.sink_tokens);
  }
  kvcache::PrefillSparsity pre;
  if (const Entry* p = s.find("prefill")) {
    pre = prefill(Section(*this, p->value, p->mark, ctx + " prefill",
                          {"dynamic", "block_tokens", "stride", "threshold", "min_prompt_tokens"}));
  }
  return SparsityProfile{.name = e.key,
                         .roles = std::move(roles),
                         .streaming = window,
                         .decode = std::move(dec),
                         .prefill = pre};
}

HeadRoles Loader::heads(const Section& s) {
  const Entry* pattern = s.find("pattern");
  if (pattern == nullptr) fail(s.mark(), s.what() + ": 'pattern' is missing");
  const Entry* rule = nullptr;
  for (const char* key : {"retrieval_ratio", "threshold", "global_ratio"}) {
    const Entry* e = s.find(key);
    if (e == nullptr) continue;
    if (rule != nullptr) {
      fail(e->mark, s.what() + ": give one of retrieval_ratio, threshold, global_ratio; got both " +
                        rule->key + " and " + e->key);
    }
    rule = e;
  }
  if (rule == nullptr) {
    fail(s.mark(), s.what() + ": needs one of retrieval_ratio, threshold, global_ratio");
  }
  const double value = fraction(*rule, s.what() + "." + rule->key);

  fs::path file = scalar(*pattern, s.what() + ".pattern");
  if (file.empty()) fail(pattern->mark, s.what() + ".pattern must not be empty");
  if (file.is_relative()) file = fs::path(path_).parent_path() / file;
  const std::string resolved = file.lexically_normal().string();
  auto it = patterns_.find(resolved);
  if (it == patterns_.end()) {
    std::error_code ec;
    if (!fs::is_regular_file(resolved, ec)) {
      fail(pattern->mark, s.what() + ": head pattern file '" + resolved +
                              (fs::exists(resolved, ec) ? "' is not a regular file" : "' not found"));
    }
    // Shape or cell errors name the TSV and its line.
    it = patterns_.emplace(resolved, kvcache::read_head_pattern(resolved, n_layers_, n_kv_heads_))
             .first;
  }
  if (rule->key == "retrieval_ratio") return kvcache::roles_by_retrieval_ratio(it->second, value);
  if (rule->key == "threshold") return kvcache::roles_by_threshold(it->second, value);
  return kvcache::roles_by_global_ratio(it->second, value);
}

kvcache::StreamingWindow Loader::streaming(const Section& s) const {
  kvcache::StreamingWindow w;
  if (const Entry* e = s.find("sink_tokens")) {
    w.sink_tokens = int_in(*e, s.what() + ".sink_tokens", 0, kInt32Max);
  }
  if (const Entry* e = s.find("local_tokens")) {
    w.local_tokens = int_in(*e, s.what() + ".local_tokens", 1, kInt32Max);
  }
  return w;
}

kvcache::DecodeSelection Loader::decode(const Section& s, int32_t sink_tokens) const {
  kvcache::DecodeSelection d;
  d.enabled = true;
  d.sink_tokens = sink_tokens;
  if (const Entry* e = s.find("selection")) d.enabled = on_off(*e, s.what() + ".selection");
  if (const Entry* e = s.find("sink_tokens")) d.sink_tokens = int_in(*e, s.what() + ".sink_tokens", 0, kInt32Max);
  if (const Entry* e = s.find("token_budget")) {
    const std::string what = s.what() + ".token_budget";
    const int64_t v = integer(*e, what);
    if (v < out_.kv_cache.page_tokens) {
      fail(e->mark, what + " must be ≥ page_tokens (" + std::to_string(out_.kv_cache.page_tokens) +
                        "), got " + std::to_string(v));
    }
    if (v > kInt32Max) fail(e->mark, what + " is too large, got " + std::to_string(v));
    d.token_budget = static_cast<int32_t>(v);
  } else if (d.token_budget < out_.kv_cache.page_tokens) {
    fail(s.mark(), s.what() + ": the default token_budget (" + std::to_string(d.token_budget) +
                       ") is below page_tokens; set token_budget");
  }
  // The sink pages and the newest page are always kept: a budget below them would be broken at every
  // selection.
  const int64_t P = out_.kv_cache.page_tokens;
  const int64_t kept = ((int64_t{d.sink_tokens} + P - 1) / P + 1) * P;
  if (d.enabled && d.token_budget < kept) {
    const Entry* e = s.find("token_budget");
    fail(e != nullptr ? e->mark : s.mark(),
         s.what() + ".token_budget (" + std::to_string(d.token_budget) + ") must hold the pages always kept: " +
             std::to_string((int64_t{d.sink_tokens} + P - 1) / P) + " sink page(s) for sink_tokens " +
             std::to_string(d.sink_tokens) + " and the newest page, " + std::to_string(kept) + " tokens");
  }
  if (const Entry* e = s.find("reselect_interval")) {
    d.reselect_interval = int_in(*e, s.what() + ".reselect_interval", 1, kInt32Max);
  }
  if (const Entry* e = s.find("dense_layers")) {
    if (!e->value.IsSequence()) fail(e->mark, s.what() + ".dense_layers must be a list of layers");
    for (size_t i = 0; i < e->value.size(); ++i) {
      const YAML::Node item = e->value[i];
      const Entry element{"dense_layers", item, item.Mark().is_null() ? e->mark : item.Mark()};
      const int32_t layer = int_in(element, s.what() + ".dense_layers item", 0, n_layers_ - 1);
      if (std::find(d.dense_layers.begin(), d.dense_layers.end(), layer) != d.dense_layers.end()) {
        fail(element.mark,
             s.what() + ".dense_layers lists layer " + std::to_string(layer) + " twice");
      }
      d.dense_layers.push_back(layer);
    }
    std::sort(d.dense_layers.begin(), d.dense_layers.end());
  }
  return d;
}

kvcache::PrefillSparsity Loader::prefill(const Section& s) const {
  kvcache::PrefillSparsity p;
  const Entry* dynamic = s.find("dynamic");
  if (dynamic == nullptr) fail(s.mark(), s.what() + ": 'dynamic' (on or off) is missing");
  p.dynamic = on_off(*dynamic, s.what() + ".dynamic");
  if (const Entry* e = s.find("block_tokens")) {
    const std::string what = s.what() + ".block_tokens";
    const int64_t v = integer(*e, what);
    if (v != 16 && v != 32 && v != 64 && v != 128) {
      fail(e->mark, what + " must be 16, 32, 64 or 128, got " + std::to_string(v));
    }
    p.block_tokens = static_cast<int32_t>(v);
  }
  if (const Entry* e = s.find("stride")) {
    p.stride = int_in(*e, s.what() + ".stride", 1, p.block_tokens);
    // Antidiagonal samples group rows by stride: a group inside one query block keeps the
    // estimate (and the output) independent of where prompt chunks end, which is on blocks.
    if (p.block_tokens % p.stride != 0) {
      fail(e->mark, s.what() + ".stride must divide block_tokens (" + std::to_string(p.block_tokens) + "), got " +
                        std::to_string(p.stride));
    }
  } else if (p.stride > p.block_tokens) {
    fail(s.mark(), s.what() + ": the default stride exceeds block_tokens; set stride");
  }
  if (const Entry* e = s.find("threshold")) {
    p.threshold = static_cast<float>(fraction(*e, s.what() + ".threshold"));
    // A double in (0, 1] can still be 0 as the float the kernels take (1e-60).
    if (!(p.threshold > 0.0f)) fail(e->mark, s.what() + ".threshold is 0 as a float; give at least 1e-30");
  }
  if (const Entry* e = s.find("min_prompt_tokens")) {
    p.min_prompt_tokens = int_in(*e, s.what() + ".min_prompt_tokens", 0, kInt32Max);
  }
  return p;
}

}  // namespace

const kvcache::SparsityProfile& ModelProfiles::get(std::string_view profile) const {
  const auto it = profiles.find(std::string(profile));
  if (it != profiles.end()) return it->second;
  std::vector<std::string> known;
  for (const auto& [k, v] : profiles) known.push_back(k);
  throw InvalidArgument("unknown sparsity profile '" + std::string(profile) + "' (known: " +
                        join(known) + ")");
}

ModelProfiles ModelProfiles::load(const std::string& path, int32_t n_layers, int32_t n_kv_heads) {
  try {
    return Loader(path, n_layers, n_kv_heads).load();
  } catch (const YAML::Exception& e) {
    // Anything yaml-cpp raises past the checks above still names the file and line.
    const int64_t line = e.mark.is_null() ? 1 : int64_t{e.mark.line} + 1;
    throw ModelFileError(path, "line " + std::to_string(line) + ": " + e.msg);
  }
}

ModelProfiles ModelProfiles::defaults_for(int32_t n_layers, int32_t n_kv_heads) {
  if (n_layers < 1 || n_kv_heads < 1) {
    throw InvalidArgument("model profiles need n_layers ≥ 1 and n_kv_heads ≥ 1");
  }
  ModelProfiles out;
  SparsityProfile dense = SparsityProfile::dense(n_layers, n_kv_heads);
  dense.name = "dense";
  out.profiles.insert_or_assign("dense", std::move(dense));
  return out;
}

std::string ModelProfiles::find_for_model(const std::string& model_path, const std::string& configs_dir) {
  std::filesystem::path p(model_path);
  while (!p.empty() && !p.has_filename()) p = p.parent_path();  // trailing slash of a directory
  std::string name = p.filename().string();
  if (name.ends_with(".gguf")) name.resize(name.size() - 5);
  if (const size_t dot = name.rfind(".Q"); dot != std::string::npos) name.resize(dot);  // quantization suffix
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  const std::filesystem::path yaml = std::filesystem::path(configs_dir) / (name + ".yaml");
  std::error_code ec;  // a name the OS cannot look up (too long for a file name) has no profile file
  return std::filesystem::exists(yaml, ec) ? yaml.string() : std::string();
}

}  // namespace sparseserve
