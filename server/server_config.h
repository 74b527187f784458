// The server's settings (DESIGN.md §6): configs/server.yaml, overridden key by key by command-line
// flags (`sparseserve serve --config FILE --http-port 8080`, as vLLM's --config). Validated once
// into an immutable ServerConfig; each component takes its own slice (engine_config()).
//
// Keys (YAML name; flag = `--` + the name with '_' → '-'):
//   host                    STRING      default 0.0.0.0
//   http_port               1..65535    default 8000
//   grpc_port               0..65535    default 50051; 0 = no gRPC front end
//   model                   PATH        required: GGUF file or Hugging Face directory
//   load_format             auto|dummy  default auto: the weights from the model's files; dummy:
//                                       made-up weights of the model's shapes (engine/model.h)
//   generation_config       auto|vllm   default auto: sampling fields a request leaves out (temperature,
//                                       top_p, top_k, min_p, repetition_penalty) take the model's
//                                       generation_config.json values (vLLM's default); vllm: the API's
//                                       defaults
//   model_config            PATH        model YAML (sparsity profiles); null = dense only
//   served_model_name       STRING      the `model` clients name; default: the model YAML's `name`,
//                                       else the model file's stem
//   default_profile         NAME        sparsity profile of requests naming none; default: the model
//                                       YAML's default_profile (must name one of its profiles)
//   backend                 auto|cpu|cuda  default auto: cuda where this build has the GPU backend, a
//                                       device is visible and it runs the default profile, else cpu.
//                                       cuda: only in a build with CUDA (else an error), device 0; runs
//                                       every profile but dynamic prefill (engine/cuda/cuda_step_runner.h)
//   kv_cache_bytes          BYTES|null  the KV cache's budget (kvcache::parse_bytes: "2GiB", "512MiB",
//                                       "1000000"...); null (default): 2GiB on the CPU, on the GPU
//                                       gpu_memory_utilization of the memory free after the weights
//   gpu_memory_utilization  (0, 1]      default 0.9: the share of the GPU's free memory (after the
//                                       weights and the steps' headroom) the KV cache takes when
//                                       kv_cache_bytes is null
//   max_num_seqs            ≥ 1         default 64
//   max_num_batched_tokens  ≥ 1         default 2048
//   max_waiting             ≥ 1         default 1024: more waiting requests are answered 429; an
//                                       HTTP request of more choices (prompts × n) is a 400
//   enable_prefix_caching   true|false  default true: vLLM's automatic prefix caching
//                                       (EngineConfig::enable_prefix_caching)
//   enable_prompt_tokens_details true|false  default false: usage carries prompt_tokens_details
//                                       {cached_tokens} (vLLM's flag of that name)
//   api_key                 STRING|null default null; when set, HTTP /v1/* and /tokenize,
//                                       /detokenize need `Authorization: Bearer KEY` (and gRPC)
//   max_body_bytes          BYTES       default 8MiB: larger request bodies are answered 413 (HTTP),
//                                       RESOURCE_EXHAUSTED (gRPC)
//   max_prompt_tokens       ≥ 0         default 0 = the model's context length
//   shutdown_grace_seconds  ≥ 0         default 20: in-flight requests may finish this long after
//                                       SIGTERM/SIGINT before they are aborted
//   grpc_write_stall_seconds ≥ 0.001    default 60: a Generate reply the client has not taken for
//                                       this long cancels the call (a client that stopped reading)
//   log_level               trace|debug|info|warn|error|off   default info
// Errors throw InvalidArgument "FILE:LINE: KEY: problem" (or "--flag: problem" for a flag);
// unknown keys are errors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace sparseserve {

struct ServerConfig {
  std::string host = "0.0.0.0";
  int32_t http_port = 8000;
  int32_t grpc_port = 50051;               // 0: no gRPC front end
  std::string model;                       // path, required
  std::string load_format = "auto";        // "auto" | "dummy" (parse_load_format)
  std::string generation_config = "auto";  // "auto" | "vllm": Model::sampling_defaults kept or reset
  std::string model_config;                // path; empty: ModelProfiles::defaults_for
  std::string served_model_name;           // empty: resolved at start (see above)
  std::string default_profile;             // empty: the model YAML's
  std::string backend = "auto";            // "auto" | "cpu" | "cuda"
  std::optional<size_t> kv_cache_bytes;    // bytes; nullopt: see above
  double gpu_memory_utilization = 0.9;
  int32_t max_num_seqs = 64;
  int32_t max_num_batched_tokens = 2048;
  int32_t max_waiting = 1024;
  bool enable_prefix_caching = true;
  bool enable_prompt_tokens_details = false;
  std::optional<std::string> api_key;      // non-empty when set
  size_t max_body_bytes = size_t{8} << 20;  // bytes
  int64_t max_prompt_tokens = 0;           // tokens; 0: the model's context length
  double shutdown_grace_seconds = 20.0;    // seconds
  double grpc_write_stall_seconds = 60.0;  // seconds, ≥ 0.001
  std::string log_level = "info";

  bool operator==(const ServerConfig&) const = default;

  // The engine's slice.
  // kv_cache_bytes: the given budget, else the CPU's default (2 GiB): on the GPU the server replaces
  // it by gpu_memory_utilization's share when none was given.
  EngineConfig engine_config() const;

  // A setting given on the command line: key (YAML name), its text, and where it came from
  // ("--http-port") for error messages.
  struct Override {
    std::string key;
    std::string value;
    std::string source;
  };
  // Defaults, then `yaml_path` (empty: none), then the overrides in order. Throws InvalidArgument.
  static ServerConfig load(const std::string& yaml_path, const std::vector<Override>& overrides);
};

// The keys load() accepts, with a one-line help each (for the CLI flags).
struct ServerSetting {
  const char* key;
  const char* help;
  const char* default_text;  // the default as a flag would give it (ServerConfig's); nullptr: none
};
std::span<const ServerSetting> server_settings();

}  // namespace sparseserve
