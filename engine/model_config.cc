#include "engine/model_config.h"

#include <climits>

#include "common/errors.h"

namespace sparseserve {

void ModelConfig::validate(const std::string& source) const {
  auto require = [&](bool ok, const std::string& what) {
    if (!ok) throw ModelFileError(source, what);
  };
  require(n_layers > 0, "number of layers must be positive");
  require(hidden > 0, "hidden size must be positive");
  require(n_heads > 0, "number of attention heads must be positive");
  require(n_kv_heads > 0, "number of key/value heads must be positive");
  require(n_heads % n_kv_heads == 0, "attention heads (" + std::to_string(n_heads) +
                                         ") must be a multiple of key/value heads (" +
                                         std::to_string(n_kv_heads) + ")");
  require(head_dim > 0 && head_dim % 2 == 0, "head dimension must be positive and even");
  require(rope_dim > 0 && rope_dim <= head_dim && rope_dim % 2 == 0,
          "rope dimension must be even and at most the head dimension");
  require(intermediate > 0, "intermediate (MLP) size must be positive");
  require(vocab_size > 0, "vocabulary size must be positive");
  require(max_context > 0 && max_context < INT32_MAX, "context length must be in [1, 2^31 − 1) (positions are int32)");
  require(rms_eps > 0.0f, "RMSNorm epsilon must be positive");
  require(rope_theta > 0.0f, "RoPE theta must be positive");
}

}  // namespace sparseserve
