// Copies of token ranges between pages of the device K/V pool (twin: kernels/cpu/page_copy.h), all
// of a list in one launch: the prefix cache's copies of streaming lanes' pages (a cached window into
// a new sequence's ring, a ring page into a snapshot). K and V are [num_pages][page_tokens][head_dim]
// bf16. Stream-ordered, no host synchronisation.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <source_location>

#include "kernels/cpu/page_copy.h"

namespace sparseserve::kernels::cuda {

// copies: n entries in device memory (kernels/cpu/page_copy.h PageRangeCopy: src < 0 zero-fills);
// no copy may read a page another one writes, and no two write the same tokens. head_dim must be a
// multiple of 8 (16-byte rows; InternalError otherwise) and the pools 16-byte aligned. Ranges are
// the caller's to check (CudaForward::copy_pages does, on the host list).
void copy_page_ranges(__nv_bfloat16* k, __nv_bfloat16* v, int64_t page_tokens, int64_t head_dim,
                      const cpu::PageRangeCopy* copies, int32_t n, cudaStream_t stream,
                      std::source_location loc = std::source_location::current());

}  // namespace sparseserve::kernels::cuda
