#include "kvcache/head_roles.h"

#include <algorithm>
#include <utility>

#include <fmt/format.h>

#include "common/errors.h"

namespace sparseserve::kvcache {

HeadRoles::HeadRoles(int32_t n_layers, int32_t n_kv_heads, std::vector<HeadRole> roles)
    : n_layers_(n_layers), n_kv_heads_(n_kv_heads), roles_(std::move(roles)) {
  if (n_layers <= 0 || n_kv_heads <= 0) {
    throw InvalidArgument(fmt::format("head roles: n_layers ({}) and n_kv_heads ({}) must be positive",
                                      n_layers, n_kv_heads));
  }
  const size_t want = static_cast<size_t>(n_layers) * static_cast<size_t>(n_kv_heads);
  if (roles_.size() != want) {
    throw InvalidArgument(fmt::format("head roles: {} entries for {} layers x {} KV heads (want {})",
                                      roles_.size(), n_layers, n_kv_heads, want));
  }
  slot_.resize(want);
  for (auto& per_layer : heads_) per_layer.resize(static_cast<size_t>(n_layers));
  for (int32_t l = 0; l < n_layers; ++l) {
    for (int32_t h = 0; h < n_kv_heads; ++h) {
      const size_t i = static_cast<size_t>(l) * static_cast<size_t>(n_kv_heads) + static_cast<size_t>(h);
      const auto r = static_cast<size_t>(roles_[i]);
      if (r > 1) throw InvalidArgument(fmt::format("head roles: layer {} head {} has an unknown role {}", l, h, r));
      heads_[r][static_cast<size_t>(l)].push_back(h);
      slot_[i] = count_[r]++;  // lanes numbered layer-major within the role
    }
  }
}

HeadRoles HeadRoles::all_retrieval(int32_t n_layers, int32_t n_kv_heads) {
  const size_t n = n_layers > 0 && n_kv_heads > 0 ? static_cast<size_t>(n_layers) * static_cast<size_t>(n_kv_heads) : 0;
  return HeadRoles(n_layers, n_kv_heads, std::vector<HeadRole>(n, HeadRole::kRetrieval));
}

namespace {
size_t role_index(HeadRole role) {
  const auto r = static_cast<size_t>(role);
  check(r <= 1, "HeadRoles: unknown role");
  return r;
}
}  // namespace

HeadRole HeadRoles::role(int32_t layer, int32_t head) const {
  check(layer >= 0 && layer < n_layers_ && head >= 0 && head < n_kv_heads_, "HeadRoles::role: (layer, head) out of range");
  return roles_[static_cast<size_t>(layer) * static_cast<size_t>(n_kv_heads_) + static_cast<size_t>(head)];
}

int32_t HeadRoles::slot(int32_t layer, int32_t head) const {
  check(layer >= 0 && layer < n_layers_ && head >= 0 && head < n_kv_heads_, "HeadRoles::slot: (layer, head) out of range");
  return slot_[static_cast<size_t>(layer) * static_cast<size_t>(n_kv_heads_) + static_cast<size_t>(head)];
}

const std::vector<int32_t>& HeadRoles::heads(int32_t layer, HeadRole role) const {
  check(layer >= 0 && layer < n_layers_, "HeadRoles::heads: layer out of range");
  return heads_[role_index(role)][static_cast<size_t>(layer)];
}

int32_t HeadRoles::slots(HeadRole role) const { return count_[role_index(role)]; }

int32_t HeadRoles::count(HeadRole role) const { return count_[role_index(role)]; }

}  // namespace sparseserve::kvcache
