// The gRPC front end (proto/sparseserve.proto, service sparseserve.v1.SparseServe) on its own
// threads. This header includes no gRPC header, so the rest of the server compiles without them.
//
// Lifecycle (as `sparseserve serve` uses it):
//   auto grpc = start_grpc_server(engine, host, port, api_key);  // listening when it returns
//   ...                                                          // serves until SIGTERM/SIGINT
//   grpc->set_ready(false);      // Health: NOT_SERVING; new Generate calls: UNAVAILABLE
//   engine.shutdown(grace);      // running requests finish or end with finish_reason ABORT,
//                                // so their streams close normally
//   grpc->shutdown(deadline);    // then the gRPC server stops (a short deadline suffices)
// The engine must outlive the GrpcServer.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "server/grpc_limits.h"

namespace sparseserve {

class Engine;

class GrpcServer {
 public:
  virtual ~GrpcServer() = default;  // shuts down with a zero deadline when still running
  GrpcServer() = default;
  GrpcServer(const GrpcServer&) = delete;
  GrpcServer& operator=(const GrpcServer&) = delete;

  // The TCP port actually bound (the one asked for, or the kernel's pick when 0 was asked).
  virtual int port() const = 0;
  // While ready(), Health (and the standard grpc.health.v1 service) answer SERVING and Generate
  // is accepted; otherwise NOT_SERVING and UNAVAILABLE. Starts true (the engine exists, so
  // requests can be served); shutdown() sets it false first.
  virtual void set_ready(bool ready) = 0;
  virtual bool ready() const = 0;
  // Stops accepting calls, then waits up to `deadline` for calls in flight; calls still running
  // after it are cancelled (their requests are aborted in the engine). Idempotent; thread-safe.
  virtual void shutdown(std::chrono::milliseconds deadline) = 0;
};

// Builds the service over `engine` and starts listening on host:port (IPv4, IPv6 or a name such as
// "0.0.0.0", "[::]" or "localhost"); returns at once, calls are served on gRPC's threads.
// api_key: when set and non-empty, every call but Health must carry the metadata
// `authorization: Bearer <key>` or `x-api-key: <key>` (else UNAUTHENTICATED).
// Throws InvalidArgument for an empty host or a port outside [0, 65535], sparseserve::Error naming
// the address when it cannot be bound.
// limits: the longest prompt and the largest request message, as on the HTTP side.
std::unique_ptr<GrpcServer> start_grpc_server(Engine& engine, const std::string& host, int port,
                                              std::optional<std::string> api_key, GrpcLimits limits = {});

}  // namespace sparseserve
