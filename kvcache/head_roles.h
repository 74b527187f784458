// Role of every (layer, KV head) under a sparsity profile, and the lane (slot) each (layer, head)
// uses in its role's page tables (kvcache/README.md): lanes of a role are numbered layer-major,
// so a sequence under the profile needs exactly count(role) page lists per role.
#pragma once

#include <cstdint>
#include <vector>

namespace sparseserve::kvcache {

enum class HeadRole : uint8_t { kRetrieval = 0, kStreaming = 1 };

class HeadRoles {
 public:
  // roles: row-major [n_layers][n_kv_heads]. Throws InvalidArgument when the size is wrong.
  HeadRoles(int32_t n_layers, int32_t n_kv_heads, std::vector<HeadRole> roles);
  static HeadRoles all_retrieval(int32_t n_layers, int32_t n_kv_heads);

  int32_t n_layers() const { return n_layers_; }
  int32_t n_kv_heads() const { return n_kv_heads_; }
  HeadRole role(int32_t layer, int32_t head) const;
  // Lane of (layer, head) among all (layer, head) pairs of its role, layer-major, KV-head order.
  int32_t slot(int32_t layer, int32_t head) const;
  // KV heads of `role` in `layer`, in slot order.
  const std::vector<int32_t>& heads(int32_t layer, HeadRole role) const;
  // Lanes (page lists) a sequence needs for a role: count(role).
  int32_t slots(HeadRole role) const;
  // Total (layer, head) pairs with the role.
  int32_t count(HeadRole role) const;
  bool all_retrieval() const { return count(HeadRole::kStreaming) == 0; }

 private:
  int32_t n_layers_, n_kv_heads_;
  std::vector<HeadRole> roles_;
  std::vector<int32_t> slot_;                      // [layer][head]
  std::vector<std::vector<int32_t>> heads_[2];     // [role][layer] -> heads
  int32_t count_[2] = {0, 0};
};

}  // namespace sparseserve::kvcache
