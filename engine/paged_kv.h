// Paged KV backend of the CPU engine: K/V in head-slot pages (kvcache/README.md) and attention with
// the exact sparse semantics of DESIGN.md §5, per (layer, KV head) role of the sequence's profile:
//   retrieval, dense            all keys j ≤ t from the slot's block table
//   retrieval, decode selection Quest-selected pages within token_budget, reselected every
//                               reselect_interval decode steps (previous set + new pages between)
//   retrieval, dynamic prefill  XAttention block mask over the chunk (prompt ≥ min_prompt_tokens)
//   streaming                   Λ band (sink + local) from sink pages, the ring and the chunk itself;
//                               the chunk is written into the ring after its attention
// The KvCacheManager (owned by the caller, e.g. the scheduler) must already hold room for each
// step's tokens (allocate) before forward().
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "engine/cpu_kv_storage.h"
#include "engine/kv_backend.h"
#include "engine/sequence_attention.h"
#include "engine/model_config.h"
#include "kernels/cpu/numerics.h"
#include "kvcache/kv_cache_manager.h"
#include "kvcache/sparsity_profile.h"

namespace sparseserve {

class PagedKvBackend final : public KvBackend {
 public:
  // numerics: kFast attends prefill chunks in sgemm query blocks; kBatchInvariant attends every
  // query alone (results independent of batching and chunking).
  PagedKvBackend(const ModelConfig& config, kvcache::KvCacheManager& manager,
                 kernels::cpu::Numerics numerics = kernels::cpu::Numerics::kFast);

  // Binds a sequence already added to the manager with profile's layout, its first `stored` tokens
  // held by its pages already (a cached prefix: whole pages). The profile must outlive the sequence.
  // InternalError for an unknown or already bound id, or `stored` beyond its pages or inside a page.
  void add_sequence(uint64_t id, const kvcache::SparsityProfile& profile, int64_t stored = 0);
  void release(uint64_t id);  // forgets the sequence here (the caller releases its pages)
  // K and V of pages' token ranges, src < 0 zero-fills (KvCacheManager::take_copies).
  void copy_pages(std::span<const kvcache::PageCopy> copies);
  // Forgets the tokens after `length` so that decoding can restart there, possibly under another
  // profile with the same roles and streaming window (benchmarks compare decode policies on one
  // prefill this way). Preconditions, else InternalError: fewer than page_tokens tokens are dropped
  // (the streaming ring still holds the window) and length is a multiple of logical_page_tokens
  // (the next token starts a fresh min/max sub-page). Selection state is reset.
  void rewind(uint64_t id, int64_t length, const kvcache::SparsityProfile& profile);

  void begin_step(std::span<const ForwardSeq> batch) override;
  void attend(int64_t layer, std::span<const ForwardSeq> batch, const float* qkv, int64_t qkv_stride,
              float* out) override;
  void end_step(std::span<const ForwardSeq> batch) override;

  const SelectionStats& selection_stats() const { return stats_; }
  const CpuKvStorage& storage() const { return storage_; }

 private:
  using SeqState = SequenceAttention;
  struct HeadTask;  // one (sequence, KV head) of a layer step

  SeqState& state(uint64_t id);
  void write_retrieval(int64_t layer, const ForwardSeq& s, const kvcache::SequenceKv& kv, int32_t slot, int32_t head,
                       const float* qkv, int64_t qkv_stride, int64_t row0);
  void write_streaming(int64_t layer, const ForwardSeq& s, const kvcache::SequenceKv& kv, int32_t slot, int32_t head,
                       const float* qkv, int64_t qkv_stride, int64_t row0);
  // Blocks a decode query of (layer, head) reads; fresh is set when a new selection was computed.
  std::vector<int32_t> decode_blocks(int64_t layer, int32_t head, SeqState& st, const kvcache::SequenceKv& kv,
                                     int32_t slot, const float* q, int64_t end, bool& fresh);

  ModelConfig config_;
  kernels::cpu::Numerics numerics_;
  kvcache::KvCacheManager& manager_;
  CpuKvStorage storage_;
  std::unordered_map<uint64_t, SeqState> seqs_;
  SelectionStats stats_;
};

}  // namespace sparseserve
