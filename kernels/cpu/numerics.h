// How the CPU kernels trade speed against batch invariance.
#pragma once

namespace sparseserve::kernels::cpu {

// kFast: sgemm-blocked paths where they are faster (matmul with many rows, prefill attention in
//   query blocks); a row's result can then depend on how rows were batched or chunked.
// kBatchInvariant: every row (token) is computed by the same per-row arithmetic whatever else is
//   in the step and however a prompt is chunked, so a request gets bit-identical results alone or
//   in any batch (what the serving engine uses: same seed, same tokens, busy or idle).
enum class Numerics { kFast, kBatchInvariant };

}  // namespace sparseserve::kernels::cpu
