#include "server/grpc_server.h"

#include <fmt/format.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/service_type.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <mutex>
#include <utility>

#include "common/errors.h"
#include "engine/engine.h"
#include "server/grpc_service.h"

namespace sparseserve {
namespace {

// "host:port", with an IPv6 literal in brackets.
std::string listen_address(const std::string& host, int port) {
  const bool ipv6_literal = host.find(':') != std::string::npos && host.front() != '[';
  return ipv6_literal ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

class GrpcServerImpl final : public GrpcServer {
 public:
  GrpcServerImpl(Engine& engine, const std::string& host, int port, std::optional<std::string> api_key,
                 GrpcLimits limits) {
    if (host.empty()) throw InvalidArgument("gRPC host is empty");
    if (port < 0 || port > 65535) throw InvalidArgument(fmt::format("gRPC port {} is outside [0, 65535]", port));
    const std::string address = listen_address(host, port);
    service_ = make_grpc_service(engine, std::move(api_key), ready_, limits);

    // The standard grpc.health.v1 service (for probes that speak it) and server reflection (for
    // grpcurl and similar tools) come with the SparseServe service.
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<size_t>(limits.max_request_bytes, INT32_MAX)));
    builder.SetMaxSendMessageSize(static_cast<int>(kMaxResponseBytes));
    // Without this a second server on the same port would share it silently (SO_REUSEPORT).
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    // Bounded resources: each call in flight holds a thread (a client that never reads holds it
    // until the service's write watchdog cancels the call), so threads are capped as the HTTP
    // front end caps its own (over the cap: RESOURCE_EXHAUSTED), and so are one connection's
    // calls. Keepalive pings find peers that vanished without closing their connection.
    if (limits.max_threads > 0) {
      grpc::ResourceQuota quota("sparseserve-grpc");
      quota.SetMaxThreads(limits.max_threads);
      builder.SetResourceQuota(quota);
    }
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, limits.max_streams_per_connection);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) {
      server_.reset();
      throw Error(fmt::format("gRPC: cannot listen on {} (address in use or not available?)", address));
    }
    set_health(true);
    spdlog::info("gRPC listening on {}", listen_address(host, port_));
  }

  ~GrpcServerImpl() override { shutdown(std::chrono::milliseconds(0)); }

  int port() const override { return port_; }

  void set_ready(bool ready) override {
    std::lock_guard<std::mutex> lock(mu_);
    ready_.store(ready);
    if (stopped_) return;
    set_health(ready);
  }

  bool ready() const override { return ready_.load(); }

  void shutdown(std::chrono::milliseconds deadline) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
    ready_.store(false);
    // Refuses new calls, waits for those in flight until the deadline, then cancels the rest;
    // Generate sees the cancellation and aborts its request.
    server_->Shutdown(std::chrono::system_clock::now() + deadline);
    server_->Wait();
    spdlog::info("gRPC server stopped");
  }

 private:
  // grpc.health.v1 answers for the server ("") and for the service by its full name, as probes
  // configured with either ask.
  void set_health(bool serving) {
    if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
      health->SetServingStatus(serving);
      health->SetServingStatus(grpc_service_name(), serving);
    }
  }

  std::mutex mu_;        // serializes set_ready and shutdown
  bool stopped_ = false;
  std::atomic<bool> ready_{true};
  int port_ = 0;
  // Destroyed in reverse order: the server before the service it runs.
  std::unique_ptr<grpc::Service> service_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace

std::unique_ptr<GrpcServer> start_grpc_server(Engine& engine, const std::string& host, int port,
                                              std::optional<std::string> api_key, GrpcLimits limits) {
  return std::make_unique<GrpcServerImpl>(engine, host, port, std::move(api_key), limits);
}

}  // namespace sparseserve
