#include "engine/cuda/block_store.h"

#include <limits>
#include <string>

#include "common/errors.h"

namespace sparseserve {

BlockStore::BlockStore(int32_t lanes, int32_t blocks_per_lane) : lanes_(lanes), blocks_per_lane_(blocks_per_lane) {
  if (lanes < 1 || blocks_per_lane < 1) throw InvalidArgument("BlockStore: lanes and blocks_per_lane must be ≥ 1");
}

void BlockStore::bind(uint64_t id) {
  if (seqs_.contains(id)) throw InternalError("BlockStore: sequence " + std::to_string(id) + " bound twice");
  int32_t region;
  if (!free_.empty()) {
    region = free_.back();
    free_.pop_back();
  } else {
    if (int64_t{regions_ + 1} * region_size() > std::numeric_limits<int32_t>::max()) {
      throw InternalError("BlockStore: more sequences than int32 store offsets reach");
    }
    region = regions_++;
  }
  seqs_.emplace(id, Seq{region, 0});
}

void BlockStore::unbind(uint64_t id) {
  const auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  free_.push_back(it->second.region);
  seqs_.erase(it);
}

std::pair<const BlockStore::Seq*, int64_t> BlockStore::checked(uint64_t id, const kvcache::SequenceKv& kv) const {
  const auto it = seqs_.find(id);
  if (it == seqs_.end()) throw InternalError("BlockStore: sequence " + std::to_string(id) + " is not bound");
  const int32_t slots = kv.retrieval_slots();
  if (slots > lanes_) throw InternalError("BlockStore: more retrieval slots than lanes");
  const auto blocks = slots == 0 ? int64_t{0} : static_cast<int64_t>(kv.retrieval_pages(0).size());
  if (blocks > blocks_per_lane_) throw InternalError("BlockStore: a block table longer than blocks_per_lane");
  if (blocks < it->second.blocks) throw InternalError("BlockStore: a block table shrank while bound");
  return {&it->second, blocks};
}

void BlockStore::pending(uint64_t id, const kvcache::SequenceKv& kv, std::vector<int32_t>& pairs) const {
  const auto [s, blocks] = checked(id, kv);
  const int64_t base = int64_t{s->region} * region_size();
  for (int32_t slot = 0; slot < kv.retrieval_slots(); ++slot) {
    const std::vector<int32_t>& pages = kv.retrieval_pages(slot);
    for (int64_t b = s->blocks; b < blocks; ++b) {
      pairs.push_back(static_cast<int32_t>(base + int64_t{slot} * blocks_per_lane_ + b));
      pairs.push_back(pages[static_cast<size_t>(b)]);
    }
  }
}

void BlockStore::stored(uint64_t id, const kvcache::SequenceKv& kv) {
  const int64_t blocks = checked(id, kv).second;
  seqs_.at(id).blocks = blocks;
}

int32_t BlockStore::region(uint64_t id) const {
  const auto it = seqs_.find(id);
  if (it == seqs_.end()) throw InternalError("BlockStore: sequence " + std::to_string(id) + " is not bound");
  return static_cast<int32_t>(int64_t{it->second.region} * region_size());
}

}  // namespace sparseserve
