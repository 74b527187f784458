#include "engine/model.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <functional>

#include "common/errors.h"
#include "engine/dummy_weights.h"
#include "engine/gguf.h"
#include "engine/gguf_config.h"
#include "engine/hf_model.h"
#include "engine/hf_tokenizer_config.h"

namespace sparseserve {

namespace {

using kernels::GgmlType;
using kernels::cpu::WeightMatrix;
using TensorLookup = std::function<const TensorView*(const std::string&)>;

// Binds tensors by name, checking shapes against the config; counts bytes and types. With `dummy`,
// every tensor is made up there instead of looked up.
class Binder {
 public:
  Binder(std::string source, TensorLookup lookup, Model& m, DummyTensors* dummy = nullptr)
      : source_(std::move(source)), lookup_(std::move(lookup)), m_(m), dummy_(dummy) {}

  void check_present(const std::string& name) const {
    if (dummy_ == nullptr && lookup_(name) == nullptr) throw ModelFileError(source_, "missing tensor '" + name + "'");
  }

  const TensorView& require(const std::string& name, std::vector<int64_t> shape, DummyFill fill = DummyFill::kMatrix) {
    const TensorView* t = dummy_ != nullptr ? &dummy_->make(name, shape, fill) : lookup_(name);
    if (t == nullptr) throw ModelFileError(source_, "missing tensor '" + name + "'");
    if (t->shape != shape) {
      throw ModelFileError(source_, "tensor '" + name + "' has shape " + fmt_shape(t->shape) + ", expected " + fmt_shape(shape));
    }
    if (!kernels::type_traits(t->type).dequantizable) {  // checked here: the matmuls would throw inside OpenMP
      throw ModelFileError(source_, "tensor '" + name + "' has type " + std::string(kernels::type_traits(t->type).name) +
                                        ", which no kernel reads as weights");
    }
    m_.weights.bytes += t->nbytes;
    m_.tensor_types[std::string(kernels::type_traits(t->type).name)] += 1;
    return *t;
  }

  WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols) {
    const TensorView& t = require(name, {rows, cols});
    if (cols % kernels::type_traits(t.type).block_elems != 0) {
      throw ModelFileError(source_, "tensor '" + name + "' width is not a multiple of its block size");
    }
    return WeightMatrix{t.type, rows, cols, t.data, kernels::row_bytes(t.type, cols)};
  }

  std::vector<float> vector(const std::string& name, int64_t n, DummyFill fill) {
    const TensorView& t = require(name, {n}, fill);
    std::vector<float> out(static_cast<size_t>(n));
    kernels::dequantize_row(t.type, t.data, out.data(), n);
    return out;
  }

 private:
  static std::string fmt_shape(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
  }
  std::string source_;
  TensorLookup lookup_;
  Model& m_;
  DummyTensors* dummy_;
};

struct TensorNames {
  std::string embed, lm_head, final_norm;
  std::function<std::string(int64_t, const char*)> layer;  // (layer, role) -> name
};

TensorNames gguf_names() {
  return {"token_embd.weight", "output.weight", "output_norm.weight", [](int64_t i, const char* role) {
            return "blk." + std::to_string(i) + "." + role;
          }};
}

TensorNames hf_names() {
  static const std::map<std::string, std::string> roles = {
      {"attn_norm.weight", "input_layernorm.weight"},     {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},       {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},           {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.bias", "self_attn.v_proj.bias"},           {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"}, {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},            {"ffn_down.weight", "mlp.down_proj.weight"},
  };
  return {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", [](int64_t i, const char* role) {
            return "model.layers." + std::to_string(i) + "." + roles.at(role);
          }};
}

void bind_weights(Binder& b, const TensorNames& n, Model& m) {
  const ModelConfig& c = m.config;
  ModelWeights& w = m.weights;
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  w.embed = b.matrix(n.embed, c.vocab_size, c.hidden);
  w.lm_head = c.tied_embeddings ? w.embed : b.matrix(n.lm_head, c.vocab_size, c.hidden);
  w.final_norm = b.vector(n.final_norm, c.hidden, DummyFill::kGain);
  // The last layer's first tensor, before anything is sized by the layer count the file claims.
  b.check_present(n.layer(c.n_layers - 1, "attn_norm.weight"));
  w.layers.resize(static_cast<size_t>(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& l = w.layers[static_cast<size_t>(i)];
    l.attn_norm = b.vector(n.layer(i, "attn_norm.weight"), c.hidden, DummyFill::kGain);
    l.wq = b.matrix(n.layer(i, "attn_q.weight"), q_dim, c.hidden);
    l.wk = b.matrix(n.layer(i, "attn_k.weight"), kv_dim, c.hidden);
    l.wv = b.matrix(n.layer(i, "attn_v.weight"), kv_dim, c.hidden);
    if (c.qkv_bias) {
      l.bq = b.vector(n.layer(i, "attn_q.bias"), q_dim, DummyFill::kBias);
      l.bk = b.vector(n.layer(i, "attn_k.bias"), kv_dim, DummyFill::kBias);
      l.bv = b.vector(n.layer(i, "attn_v.bias"), kv_dim, DummyFill::kBias);
    }
    l.wo = b.matrix(n.layer(i, "attn_output.weight"), c.hidden, q_dim);
    l.ffn_norm = b.vector(n.layer(i, "ffn_norm.weight"), c.hidden, DummyFill::kGain);
    l.w_gate = b.matrix(n.layer(i, "ffn_gate.weight"), c.intermediate, c.hidden);
    l.w_up = b.matrix(n.layer(i, "ffn_up.weight"), c.intermediate, c.hidden);
    l.w_down = b.matrix(n.layer(i, "ffn_down.weight"), c.hidden, c.intermediate);
  }
}

// The special tokens of `t` that `tok` lacks, space-separated ("" when it has them all).
std::string missing_tokens(const ChatTemplate& t, const Tokenizer& tok) {
  std::string missing;
  for (const std::string_view s : t.special_tokens()) {
    if (tok.token_id(s) < 0) missing.append(missing.empty() ? "" : " ").append(s);
  }
  return missing;
}

void pick_template(Model& m, const std::string& override_name, const std::optional<std::string>& jinja,
                   const std::string& source) {
  if (override_name != "auto") return use_chat_template(m, override_name);
  if (!jinja) return;
  try {
    ChatTemplate t = ChatTemplate::detect(*jinja, source);
    if (const std::string missing = missing_tokens(t, m.tokenizer); !missing.empty()) {
      spdlog::warn("{}: the chat template looks like {} but the tokenizer has no {}; chat requests need "
                   "chat_template set in the model YAML", source, t.name(), missing);
      return;
    }
    m.chat_template = std::move(t);
  } catch (const ModelFileError& e) {
    spdlog::warn("{}; chat requests need chat_template set in the model YAML", e.what());
  }
}

// Made-up weights kept alive by Model::storage.
std::shared_ptr<DummyTensors> dummy_storage(Model& m, LoadFormat format) {
  if (format != LoadFormat::kDummy) return nullptr;
  auto dummy = std::make_shared<DummyTensors>();
  m.storage = dummy;
  m.load_format = LoadFormat::kDummy;
  return dummy;
}

std::unique_ptr<Model> load_gguf(const std::string& path, const std::string& tmpl, LoadFormat format) {
  auto gguf = std::make_shared<GgufFile>(GgufFile::open(path));
  auto m = std::make_unique<Model>(Model{path, "gguf", config_from_gguf(*gguf), {}, Tokenizer::from_gguf(*gguf), std::nullopt, {}, gguf});
  const TensorLookup lookup = [g = gguf.get()](const std::string& name) { return g->find_tensor(name); };
  const std::shared_ptr<DummyTensors> dummy = dummy_storage(*m, format);
  Binder weights(path, lookup, *m, dummy.get());
  bind_weights(weights, gguf_names(), *m);
  // llama3 rope scaling's per-frequency factors: part of the config, read from the file either way.
  if (lookup("rope_freqs.weight") != nullptr) {
    Binder stored(path, lookup, *m);
    m->weights.rope_freq_factors = stored.vector("rope_freqs.weight", m->config.rope_dim / 2, DummyFill::kGain);
  }
  pick_template(*m, tmpl, gguf->opt_string("tokenizer.chat_template"), path);
  return m;
}

std::unique_ptr<Model> load_hf(const std::string& dir, const std::string& tmpl, LoadFormat format) {
  const std::string tok = (std::filesystem::path(dir) / "tokenizer.json").string();
  auto m = std::make_unique<Model>(Model{dir, "hf", load_hf_config(dir), {}, Tokenizer::from_hf_json(tok), std::nullopt, {}, nullptr});
  const std::shared_ptr<DummyTensors> dummy = dummy_storage(*m, format);
  std::shared_ptr<SafetensorsSet> st;
  if (!dummy) {
    st = std::make_shared<SafetensorsSet>(SafetensorsSet::open_dir(dir));
    m->storage = st;
  }
  Binder b(dir, [s = st.get()](const std::string& name) { return s->find(name); }, *m, dummy.get());
  bind_weights(b, hf_names(), *m);
  pick_template(*m, tmpl, read_hf_chat_template(dir), dir);
  try {
    const GenerationDefaults g = load_generation_config(dir);
    if (g.temperature >= 0.0f) m->sampling_defaults.temperature = g.temperature;
    if (g.top_p > 0.0f) m->sampling_defaults.top_p = g.top_p;
    if (g.top_k >= 0) m->sampling_defaults.top_k = g.top_k;
    if (g.min_p >= 0.0f) m->sampling_defaults.min_p = g.min_p;
    if (g.repetition_penalty > 0.0f) m->sampling_defaults.repetition_penalty = g.repetition_penalty;
    if (g.max_new_tokens > 0) m->max_new_tokens = g.max_new_tokens;
  } catch (const ModelFileError& e) {  // eos ids were read from it already; its sampling values are optional
    spdlog::warn("{}; requests sample with the API's defaults", e.what());
  }
  return m;
}

}  // namespace

void use_chat_template(Model& model, std::string_view name) {
  ChatTemplate t = ChatTemplate::by_name(name);
  if (const std::string missing = missing_tokens(t, model.tokenizer); !missing.empty()) {
    throw InvalidArgument("chat_template " + std::string(name) + ": the model's tokenizer has no " + missing);
  }
  model.chat_template = std::move(t);
}

LoadFormat parse_load_format(const std::string& name) {
  if (name == "auto") return LoadFormat::kAuto;
  if (name == "dummy") return LoadFormat::kDummy;
  throw InvalidArgument("load_format '" + name + "' is not one of: auto, dummy");
}

std::unique_ptr<Model> load_model(const std::string& path, const std::string& chat_template_override,
                                  LoadFormat load_format) {
  const auto t0 = std::chrono::steady_clock::now();
  std::error_code ec;  // a path the OS cannot look up (too long, a link loop, no permission) is no folder
  std::unique_ptr<Model> m = std::filesystem::is_directory(path, ec) ? load_hf(path, chat_template_override, load_format)
                                                                      : load_gguf(path, chat_template_override, load_format);
  if (const int32_t n = m->tokenizer.vocab_size(); n > m->config.vocab_size) {
    // Ids past the output rows could be fed to the model or named as stops, and index past its tables.
    throw ModelFileError(path, "the tokenizer has " + std::to_string(n) + " tokens, more than the model's " +
                                   std::to_string(m->config.vocab_size) + " embedding rows");
  } else if (n < m->config.vocab_size) {
    spdlog::info("tokenizer: {} tokens for {} output rows: the other ids decode to nothing", n, m->config.vocab_size);
    m->tokenizer.pad_vocab(static_cast<int32_t>(m->config.vocab_size));
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("loaded {} ({}, {} layers, {:.1f} MiB of {}weights) in {:.0f} ms", path, m->config.architecture,
               m->config.n_layers, static_cast<double>(m->weights.bytes) / (1 << 20),
               m->load_format == LoadFormat::kDummy ? "made-up (load_format dummy) " : "", ms);
  return m;
}

}  // namespace sparseserve
