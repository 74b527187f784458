// What both paged attention backends (engine/paged_kv.h on the CPU, engine/cuda/cuda_forward.h on the
// GPU) keep per sequence between steps, and the decode page selection schedule of DESIGN.md §5.3 on
// it, written once so that the two select at the same steps: a retrieval head's decode query reads
// every block unless its profile selects, the layer is not a dense one and the context is past the
// budget; then a fresh selection when none exists or every reselect_interval decode steps, else the
// previous selection plus every block appended since.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/kv_backend.h"
#include "kvcache/sparsity_profile.h"

namespace sparseserve {

class SequenceAttention {
 public:
  // Which blocks a retrieval head's decode query reads.
  enum class DecodeKeys {
    kAll,       // every block of the context
    kPrevious,  // previous_blocks()
    kFresh,     // a new selection, then record_selection()
  };

  // The profile must outlive this. `stored`: tokens whose K/V the sequence's pages hold already (a
  // prefix found in the prefix cache).
  SequenceAttention(const kvcache::SparsityProfile& profile, int64_t n_layers, int64_t n_kv_heads, int64_t stored = 0);

  const kvcache::SparsityProfile& profile() const { return *profile_; }
  int64_t length() const { return length_; }  // tokens whose K/V are stored

  // For the decode query of (layer, head) in a context of `end` tokens (its own included).
  DecodeKeys decode_keys(int64_t layer, int64_t head, int64_t end) const;
  // The selection of (layer, head), ascending, plus every block of `end` tokens after it was chosen.
  std::vector<int32_t> previous_blocks(int64_t layer, int64_t head, int64_t end, int32_t page_tokens) const;
  // A fresh selection (ascending blocks) made in a context of `end` tokens.
  void record_selection(int64_t layer, int64_t head, std::vector<int32_t> blocks, int64_t end, int32_t page_tokens);

  // The step of `s` is stored: its tokens count, and a decode token (one token after the prompt)
  // counts a decode step.
  void end_step(const ForwardSeq& s);
  // Decoding restarts at `length` under `profile` (same roles and window: the caller checks):
  // the selections and the decode step count start over.
  void restart(int64_t length, const kvcache::SparsityProfile& profile);

 private:
  size_t pair(int64_t layer, int64_t head) const { return static_cast<size_t>(layer * n_kv_heads_ + head); }

  const kvcache::SparsityProfile* profile_;
  int64_t n_kv_heads_;
  int64_t length_ = 0;
  int64_t decode_steps_ = 0;
  // Per (layer, KV head): the selected blocks (ascending) and the block count when they were chosen.
  std::vector<std::vector<int32_t>> selected_;
  std::vector<int32_t> selected_at_blocks_;
};

}  // namespace sparseserve
