// Hugging Face config.json / generation_config.json -> ModelConfig, GenerationDefaults
// (declared in engine/hf_model.h).
//
// Field meanings follow transformers' LlamaConfig / MistralConfig / Qwen2Config. Required fields:
// hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size,
// max_position_embeddings. Defaults where absent (or null), as transformers has them:
// num_key_value_heads = num_attention_heads, head_dim = hidden_size / num_attention_heads,
// rms_norm_eps = 1e-6, rope_theta = 10000, tie_word_embeddings = false, no rope scaling.
// Anything the Llama-family forward pass here cannot run (other activations, biases on o_proj or
// the MLP, other rope scaling types) is rejected rather than silently ignored.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>

#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "engine/hf_model.h"
#include "engine/json_file.h"

namespace sparseserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kConfigFile = "config.json";
constexpr const char* kGenerationFile = "generation_config.json";

json read_json_object(const std::string& path) {
  json j = read_json_file(path, kJsonConfigMaxBytes);
  if (!j.is_object()) throw ModelFileError(path, "top level is not a JSON object");
  return j;
}

// Typed access to one JSON object's fields; every error names the file and the field.
// A field holding null counts as absent (transformers writes null for "use the default").
class Fields {
 public:
  Fields(const json& obj, std::string file, std::string prefix = "")
      : obj_(obj), file_(std::move(file)), prefix_(std::move(prefix)) {}

  const json* get(const char* key) const {
    const auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }
  bool has(const char* key) const { return get(key) != nullptr; }

  std::optional<int64_t> opt_int(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number_integer()) fail(key, "must be an integer, got " + json_excerpt(*v));
    return v->get<int64_t>();
  }
  int64_t req_int(const char* key) const {
    const auto v = opt_int(key);
    if (!v) fail(key, "is missing");
    return *v;
  }
  std::optional<double> opt_float(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number()) fail(key, "must be a number, got " + json_excerpt(*v));
    return v->get<double>();
  }
  double req_float(const char* key) const {
    const auto v = opt_float(key);
    if (!v) fail(key, "is missing");
    return *v;
  }
  std::optional<bool> opt_bool(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_boolean()) fail(key, "must be true or false, got " + json_excerpt(*v));
    return v->get<bool>();
  }
  std::optional<std::string> opt_string(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) fail(key, "must be a string, got " + json_excerpt(*v));
    return v->get<std::string>();
  }
  // A token id field: an integer, or a list of integers (eos_token_id often is one).
  std::vector<int32_t> token_ids(const char* key) const {
    const json* v = get(key);
    std::vector<int32_t> ids;
    if (v == nullptr) return ids;
    const auto add = [&](const json& x) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 ||
          x.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        fail(key, "must be a token id or a list of token ids, got " + json_excerpt(*v));
      }
      ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
    };
    if (v->is_array()) {
      for (const json& x : *v) add(x);
    } else {
      add(*v);
    }
    return ids;
  }

  [[noreturn]] void fail(const char* key, const std::string& problem) const {
    throw ModelFileError(file_, "field '" + prefix_ + key + "' " + problem);
  }
  const std::string& file() const { return file_; }

 private:
  const json& obj_;
  std::string file_;
  std::string prefix_;  // "rope_scaling." for nested fields
};

// model_type, or failing that the first entry of architectures, -> "llama" | "mistral" | "qwen2".
std::string architecture_of(const Fields& f) {
  if (const auto type = f.opt_string("model_type")) {
    if (*type == "llama" || *type == "mistral" || *type == "qwen2") return *type;
    f.fail("model_type", "'" + *type + "' is not supported (supported: llama, mistral, qwen2)");
  }
  const json* archs = f.get("architectures");
  if (archs == nullptr) f.fail("model_type", "is missing (and so is 'architectures')");
  if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
    f.fail("architectures", "must be a non-empty list of class names, got " + json_excerpt(*archs));
  }
  const std::string arch = (*archs)[0].get<std::string>();
  if (arch == "LlamaForCausalLM") return "llama";
  if (arch == "MistralForCausalLM") return "mistral";
  if (arch == "Qwen2ForCausalLM") return "qwen2";
  f.fail("architectures", "'" + arch +
                              "' is not supported (supported: LlamaForCausalLM, "
                              "MistralForCausalLM, Qwen2ForCausalLM)");
}

// rope_scaling: {"rope_type" (or legacy "type"): "llama3" | "linear" | "default", ...}.
RopeScaling parse_rope_scaling(const Fields& f) {
  RopeScaling rs;
  const json* v = f.get("rope_scaling");
  if (v == nullptr) return rs;
  if (!v->is_object()) f.fail("rope_scaling", "must be an object, got " + json_excerpt(*v));
  const Fields s(*v, f.file(), "rope_scaling.");
  auto kind = s.opt_string("rope_type");
  if (!kind) kind = s.opt_string("type");
  if (!kind) s.fail("rope_type", "is missing");
  if (*kind == "default") return rs;

  const double factor = s.req_float("factor");
  if (!(factor > 0.0)) s.fail("factor", "must be positive");
  rs.factor = static_cast<float>(factor);
  if (*kind == "linear") {
    rs.kind = RopeScaling::Kind::kLinear;
  } else if (*kind == "llama3") {
    rs.kind = RopeScaling::Kind::kLlama3;
    rs.low_freq_factor = static_cast<float>(s.req_float("low_freq_factor"));
    rs.high_freq_factor = static_cast<float>(s.req_float("high_freq_factor"));
    rs.original_max_position = s.req_int("original_max_position_embeddings");
    // The llama3 rule interpolates between the two wavelength bounds: the factors must order them.
    if (!(rs.low_freq_factor > 0.0f && rs.high_freq_factor > rs.low_freq_factor)) {
      s.fail("high_freq_factor", "must exceed low_freq_factor (> 0)");
    }
    if (rs.original_max_position <= 0) {
      s.fail("original_max_position_embeddings", "must be positive");
    }
  } else {
    s.fail("rope_type", "'" + *kind + "' is not supported (supported: default, linear, llama3)");
  }
  return rs;
}

// Appends the ids of `more` that `ids` does not hold yet, keeping order.
void append_unique(std::vector<int32_t>& ids, const std::vector<int32_t>& more) {
  for (int32_t id : more) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
}

}  // namespace

ModelConfig load_hf_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / kConfigFile).string();
  const json root = read_json_object(path);
  const Fields f(root, path);

  ModelConfig c;
  c.architecture = architecture_of(f);
  if (const auto name = f.opt_string("_name_or_path"); name && !name->empty()) {
    c.name = *name;
  } else {
    c.name = fs::path(dir).lexically_normal().filename().string();
    if (c.name.empty()) c.name = fs::path(dir).lexically_normal().parent_path().filename().string();
  }

  if (const auto act = f.opt_string("hidden_act"); act && *act != "silu") {
    f.fail("hidden_act", "'" + *act + "' is not supported (only silu)");
  }
  if (f.opt_bool("mlp_bias").value_or(false)) f.fail("mlp_bias", "true is not supported");

  c.hidden = f.req_int("hidden_size");
  c.n_layers = f.req_int("num_hidden_layers");
  c.n_heads = f.req_int("num_attention_heads");
  c.n_kv_heads = f.opt_int("num_key_value_heads").value_or(c.n_heads);
  c.intermediate = f.req_int("intermediate_size");
  c.vocab_size = f.req_int("vocab_size");
  c.max_context = f.req_int("max_position_embeddings");
  if (const auto hd = f.opt_int("head_dim")) {
    c.head_dim = *hd;
  } else {
    if (c.n_heads <= 0 || c.hidden % c.n_heads != 0) {
      f.fail("head_dim", "is missing and hidden_size (" + std::to_string(c.hidden) +
                             ") is not a multiple of num_attention_heads (" +
                             std::to_string(c.n_heads) + ")");
    }
    c.head_dim = c.hidden / c.n_heads;
  }
  c.rope_dim = c.head_dim;
  c.rope_layout = RopeLayout::kHalf;  // HF checkpoints rotate pairs (i, i + head_dim/2)
  c.rms_eps = static_cast<float>(f.opt_float("rms_norm_eps").value_or(1e-6));
  c.rope_theta = static_cast<float>(f.opt_float("rope_theta").value_or(10000.0));
  c.rope_scaling = parse_rope_scaling(f);
  c.tied_embeddings = f.opt_bool("tie_word_embeddings").value_or(false);

  // Biases: Qwen2 always has them on q/k/v (not o). Llama's attention_bias adds one to o_proj too,
  // which the forward pass does not have.
  if (c.architecture == "qwen2") {
    c.qkv_bias = true;
  } else if (f.opt_bool("attention_bias").value_or(false)) {
    f.fail("attention_bias", "true (biases on q/k/v/o projections) is not supported");
  }

  // Sliding-window attention is not implemented; over contexts no longer than the window it
  // equals full attention, so the usable context is capped at the window. Qwen2 declares a window
  // but applies it only with use_sliding_window.
  const bool sliding = c.architecture == "mistral" ||
                       (c.architecture == "qwen2" && f.opt_bool("use_sliding_window").value_or(false));
  if (sliding) {
    if (const auto window = f.opt_int("sliding_window"); window && *window > 0) {
      c.max_context = std::min(c.max_context, *window);
    }
  }

  // Special tokens: generation_config.json (what generate() uses) first, then config.json.
  std::vector<int32_t> bos = f.token_ids("bos_token_id");
  c.eos_ids = f.token_ids("eos_token_id");
  const fs::path gen_path = fs::path(dir) / kGenerationFile;
  std::error_code ec;
  if (fs::exists(gen_path, ec)) {
    const json gen = read_json_object(gen_path.string());
    const Fields g(gen, gen_path.string());
    const std::vector<int32_t> gen_bos = g.token_ids("bos_token_id");
    if (!gen_bos.empty()) bos = gen_bos;
    std::vector<int32_t> eos = g.token_ids("eos_token_id");
    append_unique(eos, c.eos_ids);
    c.eos_ids = std::move(eos);
  }
  if (bos.size() > 1) f.fail("bos_token_id", "must be a single token id");
  c.bos_id = bos.empty() ? -1 : bos[0];

  c.validate(path);
  return c;
}

namespace {
constexpr int64_t kTransformersDefaultTopK = 50;  // GenerationConfig().top_k
}  // namespace

GenerationDefaults load_generation_config(const std::string& dir) {
  GenerationDefaults d;
  const fs::path path = fs::path(dir) / kGenerationFile;
  std::error_code ec;
  if (!fs::exists(path, ec)) return d;
  const json gen = read_json_object(path.string());
  const Fields g(gen, path.string());
  // Values as written; do_sample is not consulted (as vLLM reads these defaults).
  d.eos_ids = g.token_ids("eos_token_id");
  if (const auto t = g.opt_float("temperature")) {
    if (!(*t >= 0.0)) g.fail("temperature", "must be >= 0");
    d.temperature = static_cast<float>(*t);
  }
  if (const auto p = g.opt_float("top_p")) {
    if (!(*p > 0.0 && *p <= 1.0)) g.fail("top_p", "must be in (0, 1]");
    d.top_p = static_cast<float>(*p);
  }
  if (const auto k = g.opt_int("top_k")) {
    if (*k < 0 || *k > std::numeric_limits<int>::max()) g.fail("top_k", "must be >= 0");
    // vLLM reads the file through transformers' GenerationConfig.to_diff_dict(), which drops the
    // values equal to its defaults: a top_k of 50 (transformers' default) is no default there.
    if (*k != kTransformersDefaultTopK) d.top_k = static_cast<int>(*k);
  }
  if (const auto m = g.opt_float("min_p")) {
    if (!(*m >= 0.0 && *m <= 1.0)) g.fail("min_p", "must be in [0, 1]");
    d.min_p = static_cast<float>(*m);
  }
  if (const auto n = g.opt_int("max_new_tokens")) {
    if (*n < 1) g.fail("max_new_tokens", "must be >= 1");
    d.max_new_tokens = *n;
  }
  if (const auto r = g.opt_float("repetition_penalty")) {
    if (!(*r > 0.0 && std::isfinite(*r))) g.fail("repetition_penalty", "must be finite and > 0");
    d.repetition_penalty = static_cast<float>(*r);
  }
  return d;
}

}  // namespace sparseserve
