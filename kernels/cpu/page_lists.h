// Page lists kept on the device (DESIGN.md §8), CPU twin: the spec of kernels/cuda/page_lists.h.
//
// A step's key lists (decode_attention.h KeyPageList: page ids, first positions, lengths) are not
// uploaded entry by entry. Each sequence's retrieval block tables live in a device store that only
// ever grows by appends (scatter_pairs writes the new blocks' pages), and the step's lists are
// expanded from runs: a run is a range of list entries whose pages are
//   - consecutive blocks of one block table in the store (a store run lies within one row: a dense
//     lane's every block in order), the first positions and lengths following from the blocks and
//     the row's end, or
//   - staged by the host in the step's table upload (sink and ring pages of a streaming lane, a
//     previous selection; one staged run may cover consecutive rows), copied as they are.
// Every run writes entries [pages_at, pages_at + count) of `out`, and the same count at pos0_at and
// len_at unless pos0_at < 0 (page ids only: page_select's input lists).
#pragma once

#include <cstdint>
#include <span>

namespace sparseserve::kernels::cpu {

struct KeyRun {
  int32_t count = 0;     // entries, ≥ 0
  int32_t src = 0;       // store run: the block table's offset in `store` (its block 0); staged run:
                         //   offset in `staged` of the first page id
  int32_t src_step = 0;  // 0: a store run; > 0: a staged run whose first positions are src_step past
                         //   its page ids in `staged`, and its lengths 2 · src_step past them
  int32_t first = 0;     // store run: block of the first entry (its page at store[src + first])
  int32_t end = 0;       // store run: the row's keys are positions < end; entry of block b holds
                         //   positions b·P .. b·P + min(P, end − b·P) − 1 (b·P < end)
  int32_t pages_at = 0;  // where the run's entries go in `out`
  int32_t pos0_at = -1;  // < 0: page ids only
  int32_t len_at = -1;
};
static_assert(sizeof(KeyRun) == 8 * sizeof(int32_t));  // uploaded inside the step's int32 tables

// Writes every run's entries into `out`. InvalidArgument when a run reads or writes outside its
// arrays or a store run lists a block at or past its end (what the CUDA kernel assumes).
void expand_key_runs(std::span<const KeyRun> runs, std::span<const int32_t> store, std::span<const int32_t> staged,
                     int32_t page_tokens, std::span<int32_t> out);

// dst[pairs[2i]] = pairs[2i + 1] for every pair (the indices distinct). InvalidArgument for an odd
// length or an index outside dst.
void scatter_pairs(std::span<const int32_t> pairs, std::span<int32_t> dst);

}  // namespace sparseserve::kernels::cpu
