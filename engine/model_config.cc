#include "engine/model_config.h"

#include <climits>
#include <cmath>

#include "common/errors.h"

namespace sparseserve {

void ModelConfig::validate(const std::string& source) const {
  auto require = [&](bool ok, const std::string& what) {
    if (!ok) throw ModelFileError(source, what);
  };
  // Upper bounds far past any released model keep every product of sizes (n_heads · head_dim,
  // vocab · hidden, ...) inside int64 and a lying file from sizing buffers by its word.
  require(n_layers > 0 && n_layers <= 65536, "number of layers must be in [1, 65536]");
  require(hidden > 0 && hidden <= (1 << 20), "hidden size must be in [1, 2^20]");
  require(n_heads > 0 && n_heads <= 65536, "number of attention heads must be in [1, 65536]");
  require(n_kv_heads > 0 && n_kv_heads <= 65536, "number of key/value heads must be in [1, 65536]");
  require(n_heads % n_kv_heads == 0, "attention heads (" + std::to_string(n_heads) +
                                         ") must be a multiple of key/value heads (" +
                                         std::to_string(n_kv_heads) + ")");
  require(head_dim > 0 && head_dim % 2 == 0 && head_dim <= 65536, "head dimension must be even and in [2, 65536]");
  require(rope_dim > 0 && rope_dim <= head_dim && rope_dim % 2 == 0,
          "rope dimension must be even and at most the head dimension");
  require(intermediate > 0 && intermediate <= (1 << 24), "intermediate (MLP) size must be in [1, 2^24]");
  require(vocab_size > 0 && vocab_size < INT32_MAX, "vocabulary size must be in [1, 2^31 − 1) (token ids are int32)");
  // Special ids index logit rows (stop masks, constraints): each must name a row.
  require(bos_id == -1 || (bos_id >= 0 && bos_id < vocab_size),
          "BOS token id " + std::to_string(bos_id) + " is outside the vocabulary of " + std::to_string(vocab_size));
  for (const int32_t id : eos_ids) {
    require(id >= 0 && id < vocab_size,
            "end-of-sequence token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(vocab_size));
  }
  require(max_context > 0 && max_context < INT32_MAX, "context length must be in [1, 2^31 − 1) (positions are int32)");
  require(std::isfinite(rms_eps) && rms_eps > 0.0f, "RMSNorm epsilon must be positive and finite");
  require(std::isfinite(rope_theta) && rope_theta > 0.0f, "RoPE theta must be positive and finite");
  if (rope_scaling.kind != RopeScaling::Kind::kNone) {
    require(std::isfinite(rope_scaling.factor) && rope_scaling.factor > 0.0f, "RoPE scaling factor must be positive and finite");
  }
}

}  // namespace sparseserve
