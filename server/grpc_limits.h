// What `sparseserve serve` limits on the gRPC front end as on the HTTP one (server.yaml). Kept apart
// from the gRPC headers: grpc_server.h includes none.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparseserve {

struct GrpcLimits {
  int64_t max_prompt_tokens = 0;                // tokens; 0 or over the model's context: the context
  size_t max_request_bytes = size_t{64} << 20;  // largest request message (server.yaml max_body_bytes)
};

}  // namespace sparseserve
