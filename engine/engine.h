// The serving engine: a thread running iteration-level continuous batching over one backend (the
// CPU's, or the GPU's: engine/step_runner.h). Front ends call submit() from any thread and read each
// request's deltas from its stream.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/errors.h"
#include "engine/engine_metrics.h"
#include "engine/model.h"
#include "engine/model_profiles.h"
#include "engine/request.h"
#include "engine/step_runner.h"

namespace sparseserve {

struct EngineConfig {
  int32_t max_num_seqs = 64;             // running sequences per step
  int32_t max_num_batched_tokens = 2048; // tokens per step (decode tokens + prefill chunks)
  size_t kv_cache_bytes = size_t{2} << 30;
  int32_t max_waiting = 1024;            // waiting requests beyond this: QueueFull
  bool priority_scheduling = false;      // else FCFS
  int32_t output_buffer = 4096;          // deltas buffered per request before the engine waits
  // vLLM's automatic prefix caching: computed prompt blocks stay in the KV cache (evictable) and a
  // later request with the same prompt prefix under the same profile starts from them. Profiles
  // with streaming heads or dynamic prefill sparsity, and requests asking for prompt logprobs, start
  // from none (kvcache/prefix_cache.h).
  bool enable_prefix_caching = true;
  // Throws InvalidArgument naming the field.
  void validate() const;
  // This config's limits for a model's profiles.
  StepLimits step_limits(const ModelProfiles& profiles) const;
};

// The waiting queue is full (HTTP 429, gRPC RESOURCE_EXHAUSTED).
class QueueFull : public Error {
 public:
  using Error::Error;
};
// The engine is shutting down or stopped (HTTP 503, gRPC UNAVAILABLE).
class EngineUnavailable : public Error {
 public:
  using Error::Error;
};

// One request's output channel. Deltas arrive in order; the last has finished = true.
class RequestStream {
 public:
  virtual ~RequestStream() = default;
  virtual const std::string& id() const = 0;
  // Waits up to `timeout` for the next delta; nullopt on timeout. After the final delta: nullopt.
  virtual std::optional<RequestOutput> next(std::chrono::milliseconds timeout) = 0;
  // The client is gone: abort the request (its pages are freed in the engine's next step).
  virtual void cancel() = 0;
};

class Engine {
 public:
  // Starts the engine thread over `backend` (default: the CPU's). The model must outlive the engine.
  // InvalidArgument for a bad config, a KV cache the backend's memory cannot hold, or a default
  // profile the backend does not run.
  Engine(const Model& model, ModelProfiles profiles, EngineConfig config, StepBackend backend = cpu_step_backend());
  ~Engine();  // aborts what is left and joins the thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and queues a request. Throws InvalidArgument (empty prompt, prompt + 1 over the
  // context, unknown profile or one the backend does not run, bad sampling parameters, bad token id, duplicate live id), QueueFull,
  // or EngineUnavailable after shutdown began.
  std::shared_ptr<RequestStream> submit(Request request);
  // Aborts a live request by id; false when unknown or already finished.
  bool abort_request(const std::string& id);
  // Stops admitting; lets running requests finish for up to `grace`, then aborts the rest; joins.
  void shutdown(std::chrono::milliseconds grace);

  const Model& model() const;
  const ModelProfiles& profiles() const;
  const EngineConfig& config() const;
  const EngineMetrics& metrics() const;
  const std::string& backend() const;  // StepBackend::name
  // KV pages in use by live requests (0 when idle: every finished, aborted or cancelled request
  // has returned its pages).
  int64_t kv_pages_in_use() const;
  // The longest sequence (prompt + output tokens) the whole KV cache holds under the named profile,
  // at most the model's context: longer prompts are refused (InvalidArgument). Throws for an unknown
  // profile.
  int64_t max_sequence_tokens(const std::string& profile) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparseserve
