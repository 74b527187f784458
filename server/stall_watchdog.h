// Cancels gRPC calls whose write has waited too long. A sync server's Write() blocks while the
// client grants no flow-control window; a client that stops reading (or a peer that vanished
// behind a NAT) would hold the call's server thread for as long as the connection stays open.
#pragma once

#include <grpcpp/server_context.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace sparseserve {

class StallWatchdog {
 public:
  // A write pending longer than `limit` cancels its call (checked every limit / 4, at least every
  // 10 ms). The watchdog must outlive every call it watches.
  explicit StallWatchdog(std::chrono::milliseconds limit);
  ~StallWatchdog();
  StallWatchdog(const StallWatchdog&) = delete;
  StallWatchdog& operator=(const StallWatchdog&) = delete;

  // Watches ctx while in scope: hold one around each Write().
  class Guard {
   public:
    Guard(StallWatchdog& w, grpc::ServerContext& ctx);
    ~Guard();
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    StallWatchdog& w_;
    uint64_t key_;
  };

 private:
  struct Pending {
    grpc::ServerContext* ctx;
    std::chrono::steady_clock::time_point since;
  };
  void loop();

  const std::chrono::milliseconds limit_;
  std::mutex mu_;  // held while cancelling, so a Guard's call cannot end meanwhile
  std::condition_variable cv_;
  bool stopping_ = false;
  uint64_t next_key_ = 0;
  std::unordered_map<uint64_t, Pending> pending_;
  std::thread thread_;
};

}  // namespace sparseserve
