#include "kvcache/sparsity_profile.h"

namespace sparseserve::kvcache {

SparsityProfile SparsityProfile::dense(int32_t n_layers, int32_t n_kv_heads) {
  return SparsityProfile{.name = "dense",
                         .roles = HeadRoles::all_retrieval(n_layers, n_kv_heads),
                         .streaming = std::nullopt,
                         .decode = DecodeSelection{},
                         .prefill = PrefillSparsity{}};
}

}  // namespace sparseserve::kvcache
