#include "server/stall_watchdog.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace sparseserve {

StallWatchdog::StallWatchdog(std::chrono::milliseconds limit) : limit_(limit), thread_([this] { loop(); }) {}

StallWatchdog::~StallWatchdog() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

StallWatchdog::Guard::Guard(StallWatchdog& w, grpc::ServerContext& ctx) : w_(w) {
  std::lock_guard lock(w_.mu_);
  key_ = w_.next_key_++;
  w_.pending_.emplace(key_, Pending{&ctx, std::chrono::steady_clock::now()});
}

StallWatchdog::Guard::~Guard() {
  std::lock_guard lock(w_.mu_);
  w_.pending_.erase(key_);
}

void StallWatchdog::loop() {
  const auto period = std::max(std::chrono::milliseconds(10), limit_ / 4);
  std::unique_lock lock(mu_);
  while (!cv_.wait_for(lock, period, [&] { return stopping_; })) {
    const auto now = std::chrono::steady_clock::now();
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (now - it->second.since < limit_) {
        ++it;
        continue;
      }
      spdlog::warn("gRPC: a write waited {} ms for the client to read; cancelling its call", limit_.count());
      it->second.ctx->TryCancel();  // the blocked Write() returns false
      it = pending_.erase(it);
    }
  }
}

}  // namespace sparseserve
