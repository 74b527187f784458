// Which of a request's tokens the prefix cache may share, from its sparsity profile: the rules behind
// Engine's prefix keys and KvCacheManager::commit calls (README "Prefix caching").
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcache/sparsity_profile.h"

namespace sparseserve {

// Of a request holding `tokens` tokens (its prompt, then generated ones), how many from the start a
// later prompt that begins with them computes alike, so that their K/V may be shared:
//   - under a dynamic prefill, the prompt's whole query blocks: a block's mask depends on all its
//     rows (so not a last partial block) and on the blocks before it alone; generated positions ran
//     as decode steps, not under masks;
//   - under decode page selection, the prompt: generated positions attended selected pages only;
//   - else all of them (a decode step's K/V are a prefill's).
inline size_t cacheable_tokens(const kvcache::SparsityProfile& p, int64_t prompt_len, size_t tokens) {
  if (p.prefill.runs_on(prompt_len)) {
    const int64_t block = p.prefill.block_tokens;
    return static_cast<size_t>(prompt_len / block * block);
  }
  return p.decode.enabled ? static_cast<size_t>(prompt_len) : tokens;
}

}  // namespace sparseserve
