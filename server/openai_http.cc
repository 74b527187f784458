#include "server/openai_http.h"

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>

#include "common/errors.h"
#include "engine/engine.h"
#include "engine/json_file.h"
#include "server/client_connection.h"
#include "server/metrics_text.h"
#include "server/openai_protocol.h"

namespace sparseserve {

namespace {

using openai::ApiError;
using openai::Endpoint;
using openai::json;
using openai::ojson;
using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

template <class Json>  // openai::json or ojson
std::string dump(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

// The routes' paths and methods (as routes() registers them): a path served under other methods
// gets 405 with Allow, as FastAPI servers (vLLM) answer, not 404. "/v1/models/" is a prefix.
struct RouteMethod {
  std::string_view path;
  std::string_view method;
};
constexpr RouteMethod kRouteMethods[] = {
    {"/v1/completions", "POST"}, {"/v1/chat/completions", "POST"}, {"/v1/models", "GET"}, {"/v1/models/", "GET"},
    {"/tokenize", "POST"},       {"/detokenize", "POST"},          {"/health", "GET"},    {"/metrics", "GET"},
};

// "GET, HEAD" / "POST" for a path some route serves; "" for none.
std::string allowed_methods(std::string_view path) {
  for (const RouteMethod& r : kRouteMethods) {
    const bool prefix = r.path.ends_with('/');
    if (prefix ? (path.size() > r.path.size() && path.starts_with(r.path)) : path == r.path) {
      return r.method == "GET" ? "GET, HEAD" : std::string(r.method);
    }
  }
  return "";
}

// httplib's own pool has a fixed size; a streaming response holds its thread for the whole stream,
// so connections get threads on demand, up to `max_threads`, and keep them for later connections.
class ElasticTaskQueue final : public httplib::TaskQueue {
 public:
  explicit ElasticTaskQueue(size_t max_threads) : max_threads_(max_threads) {}

  void enqueue(std::function<void()> fn) override {
    std::unique_lock lock(mu_);
    jobs_.push_back(std::move(fn));
    if (jobs_.size() > idle_ && threads_.size() < max_threads_) {
      try {
        threads_.emplace_back([this] { work(); });
        return;
      } catch (const std::system_error& e) {  // out of threads (a pids limit)
        if (threads_.empty()) {
          // No thread will ever take it: the listener serves this connection itself.
          spdlog::warn("HTTP: cannot start a connection thread ({}); serving the connection on the listener", e.what());
          auto job = std::move(jobs_.back());
          jobs_.pop_back();
          lock.unlock();
          job();
          return;
        }
        spdlog::warn("HTTP: cannot start a connection thread ({}); the connection waits for a busy one", e.what());
      }
    }
    cv_.notify_one();
  }
  void shutdown() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();  // enqueue() is no longer called: the listener has stopped
  }

 private:
  void work() {
    std::unique_lock lock(mu_);
    for (;;) {
      ++idle_;
      cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // stopping and nothing left
      auto fn = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      fn();
      lock.lock();
    }
  }
  const size_t max_threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stopping_ = false;
};

// httplib listens with a backlog of 5; many clients connecting at once would see SYN retries.
class Listener final : public httplib::Server {
 public:
  void widen_backlog() { ::listen(svr_sock_, 1024); }  // Linux: listen() again updates the backlog
};

template <class Json>  // openai::json or ojson
void send_json(httplib::Response& res, int status, const Json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status(), e.to_json()); }

// A request whose body was left partly unread: the connection must end after the response, or the
// rest of the body would be read as the next request. httplib 0.11 keeps a connection open by the
// request's own headers alone (a handler's "Connection: close" does not end it); a content provider
// that fails after its last chunk does: the client gets the whole response, then the close.
struct BodyRefused : ApiError {
  using ApiError::ApiError;
};
void send_error_and_close(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_header("Connection", "close");
  res.set_chunked_content_provider("application/json", [body = dump(e.to_json())](size_t, httplib::DataSink& sink) {
    sink.write(body.data(), body.size());
    sink.done();
    return false;
  });
}

// Range requests are not part of the API, but httplib 0.11 applies a request's Range header to any
// response after its handler: a JSON body cut short, or copied once per range without bound. The
// server drops the ranges before routing, and again in the error handler for a Range header httplib
// refused before routing (416: ranges parsed before the bad one stay). The request object is the
// server's own (non-const); handlers see it as const.
void drop_ranges(const httplib::Request& req) { const_cast<httplib::Request&>(req).ranges.clear(); }

// A Content-Length that is no number, or several that differ (RFC 9112 §6.3): httplib reads it as
// some length and waits for that body, answering only at its read timeout. Refused before routing,
// and the connection ends (the body was not read). Under Transfer-Encoding, Content-Length is
// ignored. A valid one over the limit is left to httplib, which reads the body it skips and answers
// 413 with the connection intact: ending the connection while an honest client still sends could
// reset it before the client reads the answer.
std::optional<ApiError> refused_content_length(const httplib::Request& req) {
  if (!req.has_header("Content-Length") || req.has_header("Transfer-Encoding")) return std::nullopt;
  const std::string first = req.get_header_value("Content-Length");
  const size_t n = req.get_header_value_count("Content-Length");
  const auto digit = [](char ch) { return ch >= '0' && ch <= '9'; };
  bool valid = !first.empty() && first.size() <= 19 && std::ranges::all_of(first, digit);
  for (size_t i = 1; valid && i < n; ++i) valid = req.get_header_value("Content-Length", i) == first;
  if (!valid) {
    return ApiError(400, "invalid_request_error", "Invalid Content-Length header: '" + first.substr(0, 40) + "'", "",
                    "invalid_content_length");
  }
  return std::nullopt;
}

bool same_secret(const std::string& a, const std::string& b) {  // constant time in the content
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
  return diff == 0 && !b.empty();
}

// Bodies nest at most this deep: parsing is iterative, but copying or writing a value is recursive
// and a deep enough one (a ~200 KB body) would overflow a handler thread's stack.
constexpr int kMaxBodyDepth = 256;

json parse_body(const std::string& body) {
  bool too_deep = false;
  std::string error;
  json parsed = parse_json_bounded<json>(body, kMaxBodyDepth, &too_deep, &error);
  if (too_deep) {
    throw openai::bad_request("The request body nests deeper than " + std::to_string(kMaxBodyDepth) + " levels", "",
                              "invalid_json");
  }
  if (parsed.is_discarded()) {  // parse errors, and numbers past a double's range
    throw openai::bad_request("Invalid JSON in the request body: " + error, "", "invalid_json");
  }
  return parsed;
}

// A request body as read: its value (keys sorted: every field is read from it) and its text.
struct RequestBody {
  json value;
  std::string_view text;

  // value["tools"] again, its keys in the text's order (they reach the prompt); none without tools.
  std::optional<ojson> tools_in_order() const {
    const auto tools = value.find("tools");
    if (tools == value.end() || !tools->is_array() || tools->empty()) return std::nullopt;
    ojson ordered = parse_json_bounded<ojson>(text, kMaxBodyDepth);  // the text parsed above
    if (!ordered.is_object() || !ordered.contains("tools")) return std::nullopt;
    return std::move(ordered["tools"]);
  }
};

// The engine requests of one generation call, read together; RAII: whatever is still running when
// the session goes away (client gone, error, exception) is cancelled.
class GenerationSession {
 public:
  GenerationSession(openai::GenerationJob job, const openai::Protocol& protocol, std::string id, std::string path)
      : job_(std::move(job)),
        builder_(job_, protocol.model().tokenizer, id, protocol.model_name(),
                 std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                     .count()),
        id_(std::move(id)), path_(std::move(path)) {}
  ~GenerationSession() {
    cancel_all();
    log();
  }

  void submit(Engine& engine) {
    for (int32_t i = 0; i < job_.num_choices(); ++i) {
      streams_.push_back(engine.submit(job_.request_for_choice(i, id_)));
      done_.push_back(false);
    }
  }
  const openai::GenerationJob& job() const { return job_; }
  openai::ResponseBuilder& builder() { return builder_; }
  bool all_done() const { return std::all_of(done_.begin(), done_.end(), [](bool d) { return d; }); }

  // Waits up to `timeout` for a delta of any unfinished choice (round-robin); records it and
  // returns its stream chunks; nullopt on timeout.
  std::optional<std::vector<ojson>> pump(std::chrono::milliseconds timeout) {
    const auto deadline = clock_type::now() + timeout;
    for (;;) {
      std::vector<size_t> live;
      for (size_t k = 0; k < streams_.size(); ++k) {
        const size_t i = (cursor_ + k) % streams_.size();
        if (!done_[i]) live.push_back(i);
      }
      if (live.empty()) return std::nullopt;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
      if (live.size() == 1) return take(live[0], streams_[live[0]]->next(std::max(left, std::chrono::milliseconds(0))));
      for (size_t i : live) {
        if (auto out = streams_[i]->next(std::chrono::milliseconds(0))) return take(i, std::move(out));
      }
      if (left.count() <= 0) return std::nullopt;
      if (auto out = streams_[live[0]]->next(std::min(left, std::chrono::milliseconds(2)))) return take(live[0], std::move(out));
    }
  }

  void cancel_all() {
    for (size_t i = 0; i < streams_.size(); ++i) {
      if (!done_[i]) {
        streams_[i]->cancel();
        done_[i] = true;
        cancelled_ = true;
      }
    }
  }
  // The response is on its way (JSON sent or stream started): the session logs the request when
  // it ends. Before that, errors are logged where they are answered.
  void set_responded() { responded_ = true; }
  // The client of a non-streaming request left before its answer: cancel, and log it as 499 (the
  // status nginx gives a request its client closed).
  void client_gone() {
    status_ = 499;
    responded_ = true;
    cancel_all();
  }

 private:
  std::optional<std::vector<ojson>> take(size_t i, std::optional<RequestOutput> out) {
    if (!out) return std::nullopt;
    cursor_ = i + 1;
    if (!out->token_ids.empty() && !first_token_) first_token_ = clock_type::now();
    if (out->finished) done_[i] = true;
    return builder_.add(static_cast<int32_t>(i), *out);
  }
  // One line per request, when it ends.
  void log() const {
    if (!responded_) return;
    spdlog::info("{} {} {} n={} prompt_tokens={} completion_tokens={} ttft={:.3f}s e2e={:.3f}s finish={}{}", path_, id_,
                 status_, job_.num_choices(), builder_.prompt_tokens(), builder_.completion_tokens(),
                 first_token_ ? std::chrono::duration<double>(*first_token_ - start_).count() : 0.0, seconds_since(start_),
                 builder_.finish_reasons(), cancelled_ ? " (cancelled: client gone)" : "");
  }

  const openai::GenerationJob job_;
  openai::ResponseBuilder builder_;
  const std::string id_, path_;
  std::vector<std::shared_ptr<RequestStream>> streams_;
  std::vector<bool> done_;
  size_t cursor_ = 0;
  bool cancelled_ = false;
  bool responded_ = false;
  int status_ = 200;
  const clock_type::time_point start_ = clock_type::now();
  std::optional<clock_type::time_point> first_token_;
};

enum class State { kStarting, kReady, kDraining };

}  // namespace

struct OpenAiHttpServer::Impl {
  explicit Impl(HttpServerOptions o) : options(std::move(o)) {}

  HttpServerOptions options;
  Listener svr;
  std::thread listener;
  std::atomic<State> state{State::kStarting};
  std::atomic<const ServingContext*> ctx{nullptr};
  std::once_flag stopped;
  std::atomic<bool> listen_returned{false};
  std::atomic<int64_t> open_streams{0};  // SSE responses whose last chunk is not written yet
  const int64_t created =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();

  void check_auth(const httplib::Request& req) const {
    if (!options.api_key) return;
    const std::string auth = req.get_header_value("Authorization");
    static const std::string kBearer = "Bearer ";
    if (auth.empty()) {
      throw ApiError(401, "invalid_request_error",
                     "Missing API key: send it as `Authorization: Bearer KEY`.", "", "invalid_api_key");
    }
    if (auth.rfind(kBearer, 0) != 0 || !same_secret(auth.substr(kBearer.size()), *options.api_key)) {
      throw ApiError(401, "invalid_request_error", "Incorrect API key provided.", "", "invalid_api_key");
    }
  }

  const ServingContext& serving() const {
    const State s = state.load();
    const ServingContext* c = ctx.load();
    if (s == State::kDraining) throw ApiError(503, "service_unavailable", "The server is shutting down.", "", "shutting_down");
    if (s != State::kReady || !c) throw ApiError(503, "service_unavailable", "The model is still loading.", "", "not_ready");
    return *c;
  }

  // Reads a request body under max_body_bytes, counting the bytes as they arrive after any
  // Transfer-Encoding and Content-Encoding: httplib 0.11 checks its own limit against Content-Length
  // alone, so a chunked body, or a gzip body it inflates, would be read whole whatever its size. A
  // body refused here may be partly unread: its response ends the connection (BodyRefused).
  // A body still arriving when the server starts draining is refused at its next piece (503), so a
  // client that sends slowly cannot hold the shutdown past one read timeout.
  std::string read_body(const httplib::Request& req, httplib::Response& res,
                        const httplib::ContentReader& reader) const {
    // httplib reads a multipart body only through part callbacks (none here: it would throw), and
    // the API takes JSON alone.
    if (req.is_multipart_form_data()) {
      throw BodyRefused(415, "invalid_request_error", "The request body must be JSON, not multipart/form-data.", "",
                        "unsupported_media_type");
    }
    std::string body;
    bool too_large = false, draining = false;
    bool ok = false;
    try {
      ok = reader([&](const char* data, size_t n) {
        if (state.load() == State::kDraining) {
          draining = true;
          return false;
        }
        if (n > options.max_body_bytes - body.size()) {
          too_large = true;
          return false;
        }
        body.append(data, n);
        return true;
      });
    } catch (const std::exception&) {  // a failure inside httplib's reader: the body is partly unread
      ok = false;
    }
    if (ok && !too_large && !draining) return body;
    if (draining) throw BodyRefused(503, "service_unavailable", "The server is shutting down.", "", "shutting_down");
    if (too_large || res.status == 413) {
      throw BodyRefused(413, "invalid_request_error", "The request body is larger than this server accepts.", "",
                        "request_too_large");
    }
    if (res.status == 415) {
      throw BodyRefused(415, "invalid_request_error", "The request body's Content-Encoding is not supported.", "",
                        "unsupported_content_encoding");
    }
    throw BodyRefused(400, "invalid_request_error", "The request body could not be read.", "", "unreadable_body");
  }

  // Every API handler: errors of any kind become the OpenAI error object; the server serves on.
  template <typename F>
  httplib::Server::Handler api(F f, bool needs_auth = true) {
    return [this, f, needs_auth](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, needs_auth, [&] { f(req, res, serving()); });
    };
  }
  // The same for a POST route whose JSON body (RequestBody) f(req, body, res, ctx) takes: the body is read first
  // (read_body), as httplib reads one before an ordinary handler, so a refused request leaves none
  // of it on the connection.
  template <typename F>
  httplib::Server::HandlerWithContentReader api_with_body(F f) {
    return [this, f](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
      guarded(req, res, /*needs_auth=*/false, [&] {
        const std::string body = read_body(req, res, reader);
        check_auth(req);
        const ServingContext& c = serving();
        f(req, RequestBody{parse_body(body), body}, res, c);
      });
    };
  }
  template <typename F>
  void guarded(const httplib::Request& req, httplib::Response& res, bool needs_auth, F&& run) {
    try {
      if (needs_auth) check_auth(req);
      run();
      return;
    } catch (const BodyRefused& e) {
      send_error_and_close(res, e);
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const QueueFull& e) {
      send_error(res, ApiError(429, "rate_limit_error", std::string("The server is overloaded: ") + e.what(), "",
                               "queue_full"));
    } catch (const EngineUnavailable& e) {
      send_error(res, ApiError(503, "service_unavailable", e.what(), "", "engine_unavailable"));
    } catch (const InvalidArgument& e) {
      send_error(res, openai::bad_request(e.what()));
    } catch (const std::exception& e) {
      spdlog::error("{} {}: internal error: {}", req.method, req.path, e.what());
      send_error(res, ApiError(500, "internal_error", std::string("Internal error: ") + e.what(), "", "internal_error"));
    }
    if (req.path != "/health") spdlog::info("{} {} {}: {}", req.method, req.path, res.status, res.body.substr(0, 300));
  }

  void generate(Endpoint endpoint, const httplib::Request& req, const RequestBody& body, httplib::Response& res,
                const ServingContext& c) {
    const openai::Protocol& p = c.protocol;
    const std::optional<ojson> tools = endpoint == Endpoint::kChat ? body.tools_in_order() : std::nullopt;
    auto session = std::make_shared<GenerationSession>(
        endpoint == Endpoint::kChat ? p.parse_chat(body.value, tools ? &*tools : nullptr) : p.parse_completion(body.value), p,
        openai::make_response_id(endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-"), req.path);
    session->submit(c.engine);  // a throw cancels what was submitted (session destructor)

    if (!session->job().stream) {
      // Nothing is written before the answer, so a client that leaves is noticed on its socket.
      const ClientConnection client(req.local_addr, req.local_port, req.remote_addr, req.remote_port);
      while (!session->all_done()) {
        session->pump(std::chrono::milliseconds(500));
        if (!session->all_done() && client.gone()) {
          session->client_gone();
          send_error(res, ApiError(499, "invalid_request_error", "The client closed the connection.", "",
                                   "client_closed_request"));
          return;
        }
      }
      auto& b = session->builder();
      if (const std::string err = b.error(); !err.empty()) {
        if (b.request_error()) throw openai::bad_request("generation stopped: " + err);
        throw std::runtime_error("generation failed: " + err);
      }
      send_json(res, 200, b.response());
      session->set_responded();
      return;
    }
    session->set_responded();
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    open_streams.fetch_add(1);
    res.set_chunked_content_provider(
        "text/event-stream",
        [session](size_t, httplib::DataSink& sink) {
          try {
            return stream_step(*session, sink);
          } catch (const std::exception& e) {  // nothing may escape into httplib's writer
            spdlog::error("stream failed: {}", e.what());
            return false;
          }
        },
        // success = false: the client went away (or the server stopped): cancel at once.
        [this, session](bool success) {
          if (!success) session->cancel_all();
          open_streams.fetch_sub(1);
        });
  }

  // One call of the SSE content provider: waits up to a second for deltas and writes them.
  // False ends the response (the client is gone).
  static bool stream_step(GenerationSession& session, httplib::DataSink& sink) {
    const auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
    const auto chunks = session.pump(std::chrono::milliseconds(1000));
    if (!chunks) {
      if (session.all_done()) return false;  // not reached: done() ends the calls below
      return write(": ping\n\n");           // a second of silence: notices a client that left
    }
    for (const ojson& chunk : *chunks) {
      if (!write("data: " + dump(chunk) + "\n\n")) return false;
    }
    if (session.all_done()) {
      if (session.job().include_usage && !write("data: " + dump(session.builder().usage_chunk()) + "\n\n")) {
        return false;
      }
      if (!write("data: [DONE]\n\n")) return false;
      sink.done();
    }
    return true;
  }

  void routes() {
    svr.Post("/v1/completions", api_with_body([this](const auto& req, const RequestBody& body, auto& res, const ServingContext& c) {
      generate(Endpoint::kCompletions, req, body, res, c);
    }));
    svr.Post("/v1/chat/completions", api_with_body([this](const auto& req, const RequestBody& body, auto& res, const ServingContext& c) {
      generate(Endpoint::kChat, req, body, res, c);
    }));
    svr.Get("/v1/models", api([this](const auto&, auto& res, const ServingContext& c) {
      send_json(res, 200, c.protocol.models(created));
    }));
    svr.Get("/v1/models/(.+)", api([this](const httplib::Request& req, auto& res, const ServingContext& c) {
      if (req.matches[1] != c.protocol.model_name()) {
        throw ApiError(404, "invalid_request_error", "The model `" + std::string(req.matches[1]) + "` does not exist.",
                       "model", "model_not_found");
      }
      send_json(res, 200, c.protocol.models(created)["data"][0]);
    }));
    svr.Post("/tokenize", api_with_body([](const auto&, const RequestBody& body, auto& res, const ServingContext& c) {
      const std::optional<ojson> tools = body.value.contains("messages") ? body.tools_in_order() : std::nullopt;
      send_json(res, 200, c.protocol.tokenize(body.value, tools ? &*tools : nullptr));
    }));
    svr.Post("/detokenize", api_with_body([](const auto&, const RequestBody& body, auto& res, const ServingContext& c) {
      send_json(res, 200, c.protocol.detokenize(body.value));
    }));
    svr.Get("/health", api([](const auto&, auto& res, const ServingContext&) { send_json(res, 200, json::object()); },
                           /*needs_auth=*/false));
    svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      const ServingContext* c = ctx.load();
      if (!c) {
        res.set_content("", "text/plain; version=0.0.4");
        return;
      }
      const MetricsContext mc{c->protocol.model_name(), c->engine.kv_pages_in_use()};
      res.set_content(render_metrics(c->engine.metrics(), mc), "text/plain; version=0.0.4; charset=utf-8");
    });

    // Statuses httplib sets itself (404 route, 413 body too large, 400 unreadable request) get
    // the error object too; responses that already carry a body are left alone.
    svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      drop_ranges(req);  // a refused Range header (416) never reached the pre-routing handler
      if (!res.body.empty() || res.is_chunked_content_provider_) return httplib::Server::HandlerResponse::Unhandled;
      if (res.status == 404) {
        // No handler read the body this request may carry: the connection closes after the
        // answer, or those bytes would be parsed as the next request.
        res.set_header("Connection", "close");
        if (const std::string allow = allowed_methods(req.path); !allow.empty()) {
          res.set_header("Allow", allow);
          send_error(res, ApiError(405, "invalid_request_error",
                                   "Method " + req.method + " is not allowed on " + req.path + " (allowed: " + allow + ")",
                                   "", "method_not_allowed"));
        } else {
          send_error(res, ApiError(404, "invalid_request_error", "No route " + req.method + " " + req.path, "", "not_found"));
        }
      } else if (res.status == 413) {
        send_error(res, ApiError(413, "invalid_request_error", "The request body is larger than this server accepts.",
                                 "", "request_too_large"));
      } else {  // refused by httplib before any handler (a bad request line or header: 400, 414, 416): a
                // body it may carry is unread, so the connection ends after the answer
        send_error_and_close(res, ApiError(res.status, "invalid_request_error",
                                           "Bad request (HTTP " + std::to_string(res.status) + ")"));
      }
      return httplib::Server::HandlerResponse::Handled;
    }));
    svr.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      spdlog::error("{} {}: internal error: {}", req.method, req.path, what);
      send_error(res, ApiError(500, "internal_error", "Internal error: " + what, "", "internal_error"));
    });
    svr.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      if (req.path == "/health" || req.path == "/metrics") {
        spdlog::debug("{} {} {}", req.method, req.path, res.status);
      } else if (req.path != "/v1/completions" && req.path != "/v1/chat/completions") {
        spdlog::info("{} {} {}", req.method, req.path, res.status);
      }
    });
  }
};

OpenAiHttpServer::OpenAiHttpServer(HttpServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  auto& s = impl_->svr;
  const size_t max_threads = static_cast<size_t>(std::max(impl_->options.max_threads, 4));
  s.new_task_queue = [max_threads] { return new ElasticTaskQueue(max_threads); };
  s.set_payload_max_length(impl_->options.max_body_bytes);
  s.set_keep_alive_max_count(1000);
  s.set_keep_alive_timeout(2);  // bounds how long stop() waits for idle keep-alive connections
  s.set_read_timeout(30, 0);
  s.set_write_timeout(10, 0);
  s.set_tcp_nodelay(true);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which lets a second server bind the
  // same port silently and share its connections.
  s.set_socket_options([](socket_t sock) {
    const int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  s.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    drop_ranges(req);
    if (const std::optional<ApiError> refusal = refused_content_length(req)) {
      send_error_and_close(res, *refusal);
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  impl_->routes();
  const std::string& host = impl_->options.host;
  if (!s.bind_to_port(host, impl_->options.port)) {
    throw Error("cannot listen on " + host + ":" + std::to_string(impl_->options.port) +
                " (port in use, or not an address of this machine)");
  }
  s.widen_backlog();
}

OpenAiHttpServer::~OpenAiHttpServer() { stop(); }

void OpenAiHttpServer::start() {
  impl_->listener = std::thread([this] {
    impl_->svr.listen_after_bind();
    impl_->listen_returned.store(true);
  });
}

void OpenAiHttpServer::set_ready(const ServingContext& ctx) {
  impl_->ctx.store(&ctx);
  State expected = State::kStarting;
  impl_->state.compare_exchange_strong(expected, State::kReady);
}

void OpenAiHttpServer::begin_drain() { impl_->state.store(State::kDraining); }

void OpenAiHttpServer::wait_streams(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (impl_->open_streams.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void OpenAiHttpServer::stop() {
  std::call_once(impl_->stopped, [this] {
    impl_->state.store(State::kDraining);
    // stop() is a no-op until the listener runs: wait for it to start (or to have failed).
    while (impl_->listener.joinable() && !impl_->svr.is_running() && !impl_->listen_returned.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    impl_->svr.stop();
    if (impl_->listener.joinable()) impl_->listener.join();
  });
}

}  // namespace sparseserve
