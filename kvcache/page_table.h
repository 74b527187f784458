// CSR page tables handed to the attention kernels (flashinfer's paged_kv_t layout), one per role.
// Rows are (sequence, slot) pairs: row r = seq * slots + slot for the batch's sequences in order.
#pragma once

#include <cstdint>
#include <vector>

namespace sparseserve::kvcache {

struct PageTable {
  int32_t page_tokens = 0;
  // Slots per sequence (rows = batch * slots): the most any sequence of the batch has for the role;
  // a sequence with fewer slots (another profile) has empty rows for the rest.
  int32_t slots = 0;
  std::vector<int32_t> indptr;         // [rows + 1]: pages of row r are indices[indptr[r] .. indptr[r+1])
  // Page ids. Retrieval: block order (page of block b at indptr[r] + b). Streaming: the slot's pages
  // in StreamingGeometry::locate index order (sink pages, then the ring pages allocated so far).
  std::vector<int32_t> indices;
  // [rows]: retrieval: valid tokens in the row's last page, seq_len - (pages - 1) * P, in 1..P;
  // streaming: P (unused: positions come from locate). 0 for an empty row.
  std::vector<int32_t> last_page_len;
  std::vector<int64_t> seq_len;        // [batch]: tokens in the sequence after this step
  // Streaming only, [batch]: each sequence's Λ window and page split (sequences of different
  // profiles may differ; all 0 for a sequence without streaming slots). Empty for retrieval.
  std::vector<int32_t> sink_tokens, local_tokens, sink_pages, ring_pages;

  int32_t rows() const { return static_cast<int32_t>(indptr.empty() ? 0 : indptr.size() - 1); }
};

}  // namespace sparseserve::kvcache
