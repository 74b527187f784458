// Test helper: a readable view of head roles.
#pragma once

#include <string>
#include <vector>

#include "kvcache/head_roles.h"

namespace sparseserve::kvcache {

// Retrieval heads of each layer, one string per layer ("02" = heads 0 and 2).
inline std::vector<std::string> retrieval_heads(const HeadRoles& roles) {
  std::vector<std::string> out;
  for (int32_t l = 0; l < roles.n_layers(); ++l) {
    std::string s;
    for (int32_t h = 0; h < roles.n_kv_heads(); ++h) {
      if (roles.role(l, h) == HeadRole::kRetrieval) s += std::to_string(h);
    }
    out.push_back(s);
  }
  return out;
}

}  // namespace sparseserve::kvcache
