// Page lists kept on the device (CUDA); twin and spec: kernels/cpu/page_lists.h (KeyRun's layout,
// what a store run and a staged run write). Both launches are plain (not programmatic): the kernel
// after one starts only once it has completed, so anything later in the stream may read its output
// as plan-time data (decode_attention.h DecodeRow::pages_plan_time). CUDA graph safe.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <source_location>

#include "kernels/cpu/page_lists.h"

namespace sparseserve::kernels::cuda {

using KeyRun = cpu::KeyRun;

// Writes every run's entries into out (device arrays; runs: n_runs KeyRun, e.g. inside the step's
// int32 tables). One warp a run. Nothing is checked on the device: the host builds the runs within
// their arrays (the twin throws where they are not).
void expand_key_runs(const KeyRun* runs, int32_t n_runs, const int32_t* store, const int32_t* staged,
                     int32_t page_tokens, int32_t* out, cudaStream_t stream = nullptr,
                     std::source_location loc = std::source_location::current());

// dst[pairs[2i]] = pairs[2i + 1] for i < n_pairs (device arrays, indices distinct and inside dst).
void scatter_pairs(const int32_t* pairs, int32_t n_pairs, int32_t* dst, cudaStream_t stream = nullptr,
                   std::source_location loc = std::source_location::current());

}  // namespace sparseserve::kernels::cuda
