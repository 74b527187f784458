#include "engine/gguf_config.h"

#include <algorithm>

#include "common/errors.h"

namespace sparseserve {

ModelConfig config_from_gguf(const GgufFile& g) {
  ModelConfig c;
  c.architecture = g.get_string("general.architecture");
  const std::string& a = c.architecture;
  if (a != "llama" && a != "mistral" && a != "qwen2") {
    throw ModelFileError(g.path(), "unsupported architecture '" + a + "' (supported: llama, mistral, qwen2)");
  }
  c.name = g.opt_string("general.name").value_or(a);
  c.n_layers = g.get_int(a + ".block_count");
  c.hidden = g.get_int(a + ".embedding_length");
  c.n_heads = g.get_int(a + ".attention.head_count");
  c.n_kv_heads = g.opt_int(a + ".attention.head_count_kv").value_or(c.n_heads);
  c.intermediate = g.get_int(a + ".feed_forward_length");
  c.max_context = g.get_int(a + ".context_length");
  c.rms_eps = static_cast<float>(g.get_float(a + ".attention.layer_norm_rms_epsilon"));
  c.rope_theta = static_cast<float>(g.opt_float(a + ".rope.freq_base").value_or(10000.0));
  if (c.n_heads <= 0) throw ModelFileError(g.path(), a + ".attention.head_count must be positive");
  c.head_dim = g.opt_int(a + ".attention.key_length").value_or(c.hidden / c.n_heads);
  c.rope_dim = g.opt_int(a + ".rope.dimension_count").value_or(c.head_dim);
  // llama.cpp's converter permutes llama/mistral Q and K rows to rotate interleaved pairs;
  // qwen2 keeps Hugging Face's rotate-half layout.
  c.rope_layout = a == "qwen2" ? RopeLayout::kHalf : RopeLayout::kInterleaved;

  if (auto kind = g.opt_string(a + ".rope.scaling.type"); kind && *kind != "none") {
    if (*kind == "linear") {
      c.rope_scaling.kind = RopeScaling::Kind::kLinear;
      c.rope_scaling.factor = static_cast<float>(g.get_float(a + ".rope.scaling.factor"));
    } else {
      throw ModelFileError(g.path(), "unsupported rope scaling type '" + *kind + "'");
    }
  }
  // llama3-style scaling arrives as the rope_freqs tensor (per-pair factors), read with the weights.

  const TensorView* embd = g.find_tensor("token_embd.weight");
  if (embd == nullptr || embd->shape.size() != 2) throw ModelFileError(g.path(), "missing 2-D tensor token_embd.weight");
  c.vocab_size = g.opt_int(a + ".vocab_size").value_or(embd->shape[0]);
  c.tied_embeddings = g.find_tensor("output.weight") == nullptr;
  c.qkv_bias = g.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.bos_id = static_cast<int32_t>(g.opt_int("tokenizer.ggml.bos_token_id").value_or(-1));
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    if (auto id = g.opt_int(key)) {
      const auto v = static_cast<int32_t>(*id);
      if (std::find(c.eos_ids.begin(), c.eos_ids.end(), v) == c.eos_ids.end()) c.eos_ids.push_back(v);
    }
  }
  c.validate(g.path());
  return c;
}

}  // namespace sparseserve
