// The OpenAI-compatible HTTP front end (cpp-httplib): /v1/completions and /v1/chat/completions
// (JSON or SSE streams), /v1/models, /health, /metrics, /tokenize, /detokenize. It only translates:
// bodies go through openai::Protocol into engine Requests, RequestOutputs come back as JSON.
//
// Status codes (DESIGN.md §7), each with OpenAI's error object: 400 bad input (malformed JSON,
// wrong types, out-of-range values, context overflow), 401 missing or wrong Bearer key, 404 unknown
// model or route, 413 body over max_body_bytes, 429 engine queue full, 503 not ready or shutting
// down, 500 internal error (that request only; the server serves on).
//
// A streaming client that goes away is noticed when a write fails (SSE comments ": ping" go out
// after each second of silence, so this happens even while a request waits or prefills); its
// engine requests are cancelled at once.
#pragma once

#include <chrono>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace sparseserve {

class Engine;
namespace openai {
class Protocol;
}

struct HttpServerOptions {
  std::string host = "0.0.0.0";
  int32_t port = 8000;
  std::optional<std::string> api_key;    // required as `Authorization: Bearer KEY` on /v1/*, /tokenize, /detokenize
  size_t max_body_bytes = size_t{8} << 20;
  int32_t max_threads = 1024;            // connections served at once (threads start on demand)
};

// What is served once the model is loaded; owned by the caller and outliving the server.
struct ServingContext {
  Engine& engine;
  const openai::Protocol& protocol;
};

class OpenAiHttpServer {
 public:
  // Binds host:port; throws Error naming the address when it cannot.
  explicit OpenAiHttpServer(HttpServerOptions options);
  ~OpenAiHttpServer();  // stop()
  OpenAiHttpServer(const OpenAiHttpServer&) = delete;
  OpenAiHttpServer& operator=(const OpenAiHttpServer&) = delete;

  // Serves on its own threads. Until set_ready(), /health and the API answer 503.
  void start();
  // The model is loaded and the engine runs: /health answers 200 and the API serves.
  void set_ready(const ServingContext& ctx);
  // Shutting down: /health and new API requests answer 503; requests in flight carry on.
  void begin_drain();
  // Waits (up to timeout) until every streamed response has written its last chunk: call after the
  // engine has ended every request, before stop(), so no stream is cut short.
  void wait_streams(std::chrono::milliseconds timeout);
  // Stops listening and waits for the handlers to return (streams end when their engine requests
  // do, so shut the engine down first). Idempotent.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparseserve
