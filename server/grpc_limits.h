// What `sparseserve serve` limits on the gRPC front end as on the HTTP one (server.yaml). Kept apart
// from the gRPC headers: grpc_server.h includes none.
#pragma once

#include <cstddef>
#include <cstdint>

#include "server/sequence_limits.h"

namespace sparseserve {

// Largest response message (requests: GrpcLimits::max_request_bytes): a Tokenize answer for a
// prompt of a few hundred thousand tokens fits with room to spare; a longer Detokenize text is
// INVALID_ARGUMENT.
inline constexpr size_t kMaxResponseBytes = size_t{64} << 20;

struct GrpcLimits {
  int64_t max_prompt_tokens = 0;                // tokens; 0 or over the model's context: the context
  size_t max_request_bytes = size_t{64} << 20;  // largest request message (server.yaml max_body_bytes)
  int32_t max_threads = 0;                      // server threads, one per call in flight (0: gRPC's default, unbounded)
  int32_t max_streams_per_connection = 100;     // calls in flight on one connection
  int64_t write_stall_ms = 60000;               // a Generate write waiting longer cancels the call
  SequenceLimits sequences;                     // prompt + completion per profile (empty: the context)
};

}  // namespace sparseserve
