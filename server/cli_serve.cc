#include "server/cli_serve.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <chrono>
#include <condition_variable>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

#include "common/errors.h"
#include "common/logging.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_profiles.h"
#include "server/grpc_server.h"
#include "server/openai_http.h"
#include "server/openai_protocol.h"
#include "server/sequence_limits.h"
#include "server/server_config.h"
#ifdef SPARSESERVE_SERVER_CUDA
#include "engine/cuda/cuda_step_runner.h"
#include "kernels/cuda/cuda_check.h"
#endif

namespace sparseserve::cli {

namespace {

// The engine backend `backend` names. auto: the GPU where this build has it, a device is visible and
// it runs the default profile; else the CPU (said in the log either way).
StepBackend step_backend(const std::string& backend, const Model& model, const ModelProfiles& profiles) {
#ifdef SPARSESERVE_SERVER_CUDA
  if (backend == "cuda") return cuda_step_backend(0);
  if (backend == "auto") {
    StepBackend gpu = cuda_step_backend(0);
    const std::string model_why = gpu.unsupported_model(model, profiles.kv_cache);
    const std::string why = gpu.unsupported(model, profiles.get(profiles.default_profile));
    if (kernels::cuda::cuda_device_count() == 0) {
      spdlog::info("backend auto: no CUDA device visible, serving on the CPU");
    } else if (!model_why.empty()) {
      spdlog::info("backend auto: serving on the CPU: {}", model_why);
    } else if (!why.empty()) {
      spdlog::info("backend auto: serving on the CPU: the default profile '{}': {}", profiles.default_profile, why);
    } else {
      spdlog::info("backend auto: serving on the GPU");
      return gpu;
    }
  }
#else
  (void)model, (void)profiles;
#endif
  if (backend != "cpu" && backend != "auto") {
    throw InvalidArgument("backend: '" + backend + "' is not available in this build");
  }
  return cpu_step_backend();
}

// SIGTERM / SIGINT: the handler only writes the signal and its sender into a pipe (async-signal-safe; it
// runs on whichever thread the kernel picks, including threads libraries started before main);
// a watcher thread reads the pipe. The first signal asks for a graceful shutdown; a second one
// exits at once. Once the ShutdownSignals object is gone (run_serve returning: static destructors,
// spdlog's registry among them, may run next) the actions from before are back and the watcher neither
// logs nor acts on a record it still finds in the pipe. One object per process (run_serve's).
int g_signal_pipe[2] = {-1, -1};

// What the handler writes: one record per signal (smaller than PIPE_BUF, so writes are atomic).
struct SignalRecord {
  int32_t sig;
  int32_t sender;  // pid of the process that sent it (0: the kernel or a terminal)
};

extern "C" void on_shutdown_signal(int sig, siginfo_t* info, void*) {
  const int saved = errno;
  const SignalRecord r{sig, info ? static_cast<int32_t>(info->si_pid) : 0};
  [[maybe_unused]] const ssize_t n = ::write(g_signal_pipe[1], &r, sizeof(r));
  errno = saved;
}

class ShutdownSignals {
 public:
  ShutdownSignals() : state_(std::make_shared<State>()) {
    if (g_signal_pipe[0] < 0 && ::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
      throw Error(std::string("cannot create the signal pipe: ") + std::strerror(errno));
    }
    struct sigaction sa = {};
    sa.sa_sigaction = on_shutdown_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    ::sigaction(SIGTERM, &sa, &old_term_);
    ::sigaction(SIGINT, &sa, &old_int_);
    std::signal(SIGPIPE, SIG_IGN);  // a client that left is a failed write, not a dead process
    // Detached: it may outlive run_serve; it touches only `state`, and logs only under its mutex
    // while `closed` is false, so never after the destructor has returned.
    std::thread([state = state_] {
      for (int count = 0;;) {
        pollfd pfd{g_signal_pipe[0], POLLIN, 0};
        SignalRecord r{};
        if (::poll(&pfd, 1, -1) <= 0 || ::read(g_signal_pipe[0], &r, sizeof(r)) != sizeof(r)) continue;
        const char* name = r.sig == SIGINT ? "SIGINT" : "SIGTERM";
        {
          std::lock_guard lock(state->mu);
          if (state->closed) return;
          if (count++ > 0) {
            spdlog::warn("second {} (from pid {}): exiting now", name, r.sender);
            spdlog::default_logger()->flush();
            std::_Exit(1);
          }
          spdlog::info("{} from pid {}", name, r.sender);
          state->signal = r.sig;
        }
        state->cv.notify_all();
      }
    }).detach();
  }
  ShutdownSignals(const ShutdownSignals&) = delete;
  ShutdownSignals& operator=(const ShutdownSignals&) = delete;
  ~ShutdownSignals() {
    ::sigaction(SIGTERM, &old_term_, nullptr);
    ::sigaction(SIGINT, &old_int_, nullptr);
    std::lock_guard lock(state_->mu);  // waits out a watcher that is logging
    state_->closed = true;
  }
  int wait() const {
    std::unique_lock lock(state_->mu);
    state_->cv.wait(lock, [&] { return state_->signal != 0; });
    return state_->signal;
  }
  // The first signal, if one has come (0: none).
  int received() const {
    std::lock_guard lock(state_->mu);
    return state_->signal;
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    int signal = 0;
    bool closed = false;  // the object is gone: records still in the pipe are dropped
  };
  std::shared_ptr<State> state_;
  struct sigaction old_term_ = {}, old_int_ = {};  // the actions before, back once the object is gone
};

// Throws Error when no socket can bind host:port (in use, or an address not on this machine): the
// gRPC server binds only once the engine exists, so a taken port would otherwise be found after the
// model has loaded. The socket is closed again at once (a port taken in between still fails later).
void check_port_free(const std::string& host, int port, const char* what) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0) {
    throw Error(std::string(what) + ": cannot resolve " + host + ": " + ::gai_strerror(rc));
  }
  int err = 0;
  bool bound = false;
  for (const addrinfo* a = found; a != nullptr && !bound; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // as the servers bind
    bound = ::bind(fd, a->ai_addr, a->ai_addrlen) == 0;
    if (!bound) err = errno;
    ::close(fd);
  }
  ::freeaddrinfo(found);
  if (!bound) throw Error(std::string(what) + ": cannot listen on " + host + ":" + service + " (" + std::strerror(err) + ")");
}

// A setting that is true or false (its default says which).
bool is_boolean(const ServerSetting& s) {
  return s.default_text != nullptr && (std::string(s.default_text) == "true" || std::string(s.default_text) == "false");
}

std::string default_model_name(const ServerConfig& c, const ModelProfiles& profiles) {
  if (!c.served_model_name.empty()) return c.served_model_name;
  if (!c.model_config.empty() && !profiles.name.empty()) return profiles.name;
  const std::filesystem::path p(c.model);
  return std::filesystem::is_directory(p) ? p.filename().string() : p.stem().string();
}

}  // namespace

void add_serve_command(CLI::App& app, ServeArgs& a) {
  auto* cmd = app.add_subcommand("serve", "Serve the OpenAI HTTP API and the gRPC API");
  cmd->add_option("--config", a.config, "Server YAML (configs/server.yaml); flags override its keys");
  for (const ServerSetting& s : server_settings()) {
    std::string flag = std::string("--") + s.key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    CLI::Option* opt = cmd->add_option(flag, a.values[s.key], s.help);
    if (s.default_text != nullptr) opt->default_str(s.default_text);  // shown in --help, not applied
    if (std::string(s.key) == "api_key") opt->envname("SPARSESERVE_API_KEY");
    a.options[s.key] = opt;
    if (is_boolean(s)) {
      opt->expected(0, 1);  // alone: true
      a.negations[s.key] = cmd->add_flag("--no-" + flag.substr(2), a.negated[s.key], std::string("The same as ") + flag + " false")
                               ->excludes(opt);
    }
  }
}

int run_serve(const ServeArgs& a) {
  ShutdownSignals signals;

  std::vector<ServerConfig::Override> overrides;
  for (const ServerSetting& s : server_settings()) {
    const CLI::Option* opt = a.options.at(s.key);
    if (opt->count() > 0) {
      const std::string& value = a.values.at(s.key);
      overrides.push_back({s.key, value.empty() && is_boolean(s) ? "true" : value, opt->get_name()});  // "--http-port"
    } else if (const auto neg = a.negations.find(s.key); neg != a.negations.end() && neg->second->count() > 0) {
      overrides.push_back({s.key, "false", neg->second->get_name()});
    }
  }
  const ServerConfig cfg = ServerConfig::load(a.config, overrides);
  init_logging(cfg.log_level);

  // HTTP first: /health answers 503 while the model loads.
  HttpServerOptions http_options;
  http_options.host = cfg.host;
  http_options.port = cfg.http_port;
  http_options.api_key = cfg.api_key;
  http_options.max_body_bytes = cfg.max_body_bytes;
  // A thread per request in flight (running or waiting) on either front end, plus some for the rest.
  const auto max_threads = static_cast<int32_t>(
      std::min<int64_t>(std::numeric_limits<int32_t>::max(), int64_t{cfg.max_num_seqs} + cfg.max_waiting + 64));
  http_options.max_threads = max_threads;
  OpenAiHttpServer http(http_options);
  http.start();
  spdlog::info("HTTP listening on {}:{} (503 until the model is loaded)", cfg.host, cfg.http_port);
  if (cfg.grpc_port != 0) check_port_free(cfg.host, cfg.grpc_port, "gRPC");
  // A signal during the loading (minutes for a large model) ends the command once the current step
  // is done, before anything is announced as serving.
  const auto stop_early = [&](const char* step) {
    if (const int sig = signals.received(); sig != 0) {
      spdlog::info("{} during {}: stopping before serving", sig == SIGINT ? "SIGINT" : "SIGTERM", step);
      http.stop();
      return true;
    }
    return false;
  };

  const auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<Model> model = load_model(cfg.model, "auto", parse_load_format(cfg.load_format));
  if (cfg.generation_config == "vllm") {
    model->sampling_defaults = SamplingParams{};
    model->max_new_tokens = 0;
  }
  if (const SamplingParams& d = model->sampling_defaults;
      d.temperature != 1.0f || d.top_p != 1.0f || d.top_k > 0 || d.min_p != 0.0f || d.repetition_penalty != 1.0f) {
    spdlog::info("sampling defaults from the model's generation_config.json: temperature {}, top_p {}, top_k {}, "
                 "min_p {}, repetition_penalty {} (generation_config: vllm for the API's own)",
                 d.temperature, d.top_p, d.top_k, d.min_p, d.repetition_penalty);
  }
  if (model->max_new_tokens > 0) {
    spdlog::info("max_new_tokens {} from the model's generation_config.json caps every request's max_tokens",
                 model->max_new_tokens);
  }
  if (stop_early("model loading")) return 0;
  const auto& mc = model->config;
  if (cfg.model_config.empty()) spdlog::info("no model_config: the dense profile only, the model's own chat template");
  ModelProfiles profiles =
      cfg.model_config.empty()
          ? ModelProfiles::defaults_for(static_cast<int32_t>(mc.n_layers), static_cast<int32_t>(mc.n_kv_heads))
          : ModelProfiles::load(cfg.model_config, static_cast<int32_t>(mc.n_layers), static_cast<int32_t>(mc.n_kv_heads));
  if (profiles.chat_template != "auto") use_chat_template(*model, profiles.chat_template);
  const std::string name = default_model_name(cfg, profiles);
  if (!cfg.default_profile.empty()) {
    try {
      profiles.get(cfg.default_profile);
    } catch (const InvalidArgument& ex) {
      throw InvalidArgument(std::string("default_profile: ") + ex.what());
    }
    profiles.default_profile = cfg.default_profile;
  }

  StepBackend backend = step_backend(cfg.backend, *model, profiles);
  EngineConfig engine_config = cfg.engine_config();
  if (!cfg.kv_cache_bytes && backend.device_kv_bytes) {
    engine_config.kv_cache_bytes =
        backend.device_kv_bytes(*model, cfg.gpu_memory_utilization, engine_config.step_limits(profiles));
  }
  const size_t kv_bytes = engine_config.kv_cache_bytes;
  Engine engine(*model, std::move(profiles), engine_config, std::move(backend));
  if (stop_early("start-up")) return 0;
  // A KV cache too small for one sequence of the whole context: said at start, not first learnt
  // from a refused request (vLLM refuses to start; here the cache is the operator's choice).
  const std::string& default_profile = engine.profiles().default_profile;
  const int64_t fits = engine.max_sequence_tokens(default_profile);
  if (fits < 2) {
    throw InvalidArgument("kv_cache_bytes " + std::to_string(kv_bytes) +
                          " holds no sequence of two tokens under the default profile '" + default_profile +
                          "': every request would be refused");
  }
  if (fits < mc.max_context) {
    spdlog::warn("kv_cache_bytes {} holds one sequence of at most {} tokens under the default profile '{}', "
                 "under the model's context of {}: longer prompts are refused (raise kv_cache_bytes)",
                 kv_bytes, fits, default_profile, mc.max_context);
  }
  openai::ProtocolLimits limits;
  limits.max_prompt_tokens = cfg.max_prompt_tokens;
  // A request's choices wait in the queue side by side: more of them than max_waiting could never
  // all be queued (a 429 on every retry), so they are a bad request.
  limits.max_choices = std::min(limits.max_choices, cfg.max_waiting);
  limits.prompt_tokens_details = cfg.enable_prompt_tokens_details;
  const SequenceLimits sequences = SequenceLimits::of(engine);
  limits.sequences = sequences;
  if (cfg.max_prompt_tokens > mc.max_context) {
    spdlog::warn("max_prompt_tokens {} is over the model's context; prompts are limited to {} tokens",
                 cfg.max_prompt_tokens, mc.max_context);
  }
  const openai::Protocol protocol(*model, engine.profiles(), name, limits);
  std::unique_ptr<GrpcServer> grpc;
  if (cfg.grpc_port != 0) {
    grpc = start_grpc_server(engine, cfg.host, cfg.grpc_port, cfg.api_key,
                             GrpcLimits{.max_prompt_tokens = cfg.max_prompt_tokens,
                                        .max_request_bytes = cfg.max_body_bytes,
                                        .max_threads = max_threads,
                                        .write_stall_ms = std::llround(cfg.grpc_write_stall_seconds * 1000),
                                        .sequences = sequences});
  }

  const ServingContext serving{engine, protocol};
  http.set_ready(serving);
  // From here on the HTTP handlers use `serving`: whichever way this function ends, they stop
  // before it and the engine go away.
  struct StopHttp {
    OpenAiHttpServer& http;
    ~StopHttp() { http.stop(); }
  } stop_http{http};
  spdlog::info("serving model '{}' ({}, context {} tokens, default profile '{}') on http://{}:{}{}; ready in {:.1f} s",
               name, model->path, mc.max_context, engine.profiles().default_profile, cfg.host, cfg.http_port,
               grpc ? " and gRPC port " + std::to_string(grpc->port()) : std::string(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

  const int sig = signals.wait();
  const auto grace = std::chrono::milliseconds(static_cast<int64_t>(cfg.shutdown_grace_seconds * 1000));
  spdlog::info("{}: shutting down; requests in flight may finish for {:.1f} s", sig == SIGINT ? "SIGINT" : "SIGTERM",
               cfg.shutdown_grace_seconds);
  http.begin_drain();
  if (grpc) grpc->set_ready(false);
  // The engine stops admitting at once, lets running requests finish within the grace period and
  // aborts the rest; every HTTP stream and gRPC call then ends with its request.
  engine.shutdown(grace);
  if (grpc) grpc->shutdown(std::chrono::seconds(1));
  grpc.reset();
  http.wait_streams(std::chrono::seconds(2));
  http.stop();
  spdlog::info("stopped");
  return 0;
}

}  // namespace sparseserve::cli
