// The bounded per-request output channel behind Engine::submit's RequestStream.
// The engine pushes deltas and never blocks: past `capacity` queued deltas, a new delta is merged
// into the last one (tokens, text and logprobs concatenated), so a slow reader costs memory in
// text only, never an engine stall.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>

#include "engine/engine.h"

namespace sparseserve {

class RequestStreamImpl final : public RequestStream {
 public:
  RequestStreamImpl(std::string id, size_t capacity, std::function<void(const std::string&)> on_cancel)
      : id_(std::move(id)), capacity_(capacity), on_cancel_(std::move(on_cancel)) {}

  const std::string& id() const override { return id_; }

  std::optional<RequestOutput> next(std::chrono::milliseconds timeout) override {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !queue_.empty() || closed_; });
    if (queue_.empty()) return std::nullopt;
    RequestOutput out = std::move(queue_.front());
    queue_.pop_front();
    return out;
  }

  void cancel() override {
    bool first = false;
    {
      std::lock_guard lock(mu_);
      first = !cancelled_ && !closed_;
      cancelled_ = true;
    }
    if (first && on_cancel_) on_cancel_(id_);
  }

  // Engine side.
  void push(RequestOutput out) {
    {
      std::lock_guard lock(mu_);
      if (queue_.size() >= capacity_ && !queue_.back().finished) {
        RequestOutput& last = queue_.back();
        last.token_ids.insert(last.token_ids.end(), out.token_ids.begin(), out.token_ids.end());
        last.text += out.text;
        last.logprobs.insert(last.logprobs.end(), out.logprobs.begin(), out.logprobs.end());
        last.prompt_logprobs.insert(last.prompt_logprobs.end(), out.prompt_logprobs.begin(), out.prompt_logprobs.end());
        last.finished = out.finished;
        last.finish_reason = out.finish_reason;
        last.stop_reason = out.stop_reason;
        last.stop_token = out.stop_token;
        last.error = out.error;
        last.request_error = out.request_error;
        last.completion_tokens = out.completion_tokens;
      } else {
        queue_.push_back(std::move(out));
      }
    }
    cv_.notify_all();
  }
  void close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::string id_;
  size_t capacity_;
  std::function<void(const std::string&)> on_cancel_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestOutput> queue_;
  bool closed_ = false, cancelled_ = false;
};

}  // namespace sparseserve
