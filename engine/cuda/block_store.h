// Which part of the device's block-table store (kernels/cpu/page_lists.h) each bound sequence's
// retrieval block tables occupy, and which of their blocks the store holds already. Plain host
// bookkeeping; CudaForward keeps the device array and applies the pairs `pending` returns.
//
// Layout: the store is an int32 array of regions, one per bound sequence (freed regions are reused);
// a region holds `lanes` block tables of `blocks_per_lane` entries: the page of retrieval slot s's
// block b at region_base + s · blocks_per_lane + b. Block tables only grow while a sequence is bound
// (KvCacheManager::allocate); a sequence unbound and bound again starts from an empty region.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvcache/sequence_kv.h"

namespace sparseserve {

class BlockStore {
 public:
  // lanes: the most retrieval slots a sequence has (n_layers · n_kv_heads); blocks_per_lane: the most
  // blocks a slot holds (ceil(max_context / page_tokens)). InvalidArgument unless both are ≥ 1.
  BlockStore(int32_t lanes, int32_t blocks_per_lane);

  void bind(uint64_t id);    // InternalError when bound already
  void unbind(uint64_t id);  // no-op for an unbound id
  bool bound(uint64_t id) const { return seqs_.contains(id); }

  // Appends (store index, page) pairs for the blocks `kv` holds that the store does not yet.
  // InternalError for an unbound id, more slots than lanes, more blocks than blocks_per_lane, or
  // fewer blocks than stored before.
  void pending(uint64_t id, const kvcache::SequenceKv& kv, std::vector<int32_t>& pairs) const;
  // Counts every block `kv` holds as stored: called once `pending`'s pairs are on their way to the
  // device (a step that fails before then sends them again). The same checks as `pending`.
  void stored(uint64_t id, const kvcache::SequenceKv& kv);

  // Offset of the sequence's region (slot 0, block 0). InternalError for an unbound id.
  int32_t region(uint64_t id) const;
  int32_t blocks_per_lane() const { return blocks_per_lane_; }
  // Entries the store spans: every region handed out so far.
  int64_t size() const { return int64_t{regions_} * region_size(); }
  int64_t region_size() const { return int64_t{lanes_} * blocks_per_lane_; }  // entries a sequence takes

 private:
  struct Seq {
    int32_t region = 0;
    int64_t blocks = 0;  // blocks of each slot the store holds
  };
  // The sequence's entry and the blocks `kv` holds a slot, checked against the store's shape.
  std::pair<const Seq*, int64_t> checked(uint64_t id, const kvcache::SequenceKv& kv) const;
  int32_t lanes_, blocks_per_lane_;
  std::unordered_map<uint64_t, Seq> seqs_;
  std::vector<int32_t> free_;  // regions handed back
  int32_t regions_ = 0;
};

}  // namespace sparseserve
