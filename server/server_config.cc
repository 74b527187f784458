#include "server/server_config.h"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "common/errors.h"
#include "common/mapped_file.h"
#include "kvcache/capacity.h"

namespace sparseserve {

namespace {

constexpr std::array kSettings = {
    ServerSetting{"host", "Address the HTTP (and gRPC) server binds", "0.0.0.0"},
    ServerSetting{"http_port", "HTTP port (OpenAI API)", "8000"},
    ServerSetting{"grpc_port", "gRPC port; 0 = no gRPC front end", "50051"},
    ServerSetting{"model", "GGUF file or Hugging Face directory", nullptr},
    ServerSetting{"load_format", "auto | dummy (dummy: made-up weights of the model's shapes, for benchmarks)", "auto"},
    ServerSetting{"generation_config",
                  "auto | vllm (auto: requests that leave temperature, top_p, top_k, min_p or repetition_penalty "
                  "out take the model's generation_config.json values, as vLLM; vllm: the API's defaults)",
                  "auto"},
    ServerSetting{"model_config",
                  "Model YAML with sparsity profiles and chat template (configs/models/NAME.yaml); unset: dense only",
                  nullptr},
    ServerSetting{"served_model_name", "Model name clients use (default: the model YAML's name, else the file's stem)",
                  nullptr},
    ServerSetting{"default_profile",
                  "Sparsity profile of requests that name none (default: the model YAML's default_profile)", nullptr},
    ServerSetting{"backend", "auto | cpu | cuda (auto: cuda where this build has it and a GPU is visible)", "auto"},
    ServerSetting{"kv_cache_bytes",
                  "KV cache budget, e.g. 2GiB (default: 2GiB on the CPU; on the GPU gpu_memory_utilization)", nullptr},
    ServerSetting{"gpu_memory_utilization",
                  "Share of the GPU memory free after the weights that the KV cache takes (without kv_cache_bytes)",
                  "0.9"},
    ServerSetting{"max_num_seqs", "Running sequences per step", "64"},
    ServerSetting{"max_num_batched_tokens", "Tokens per engine step", "2048"},
    ServerSetting{"max_waiting", "Waiting requests before new ones get 429", "1024"},
    ServerSetting{"enable_prefix_caching",
                  "true | false: computed prompt blocks are kept and reused by later requests with the same prefix",
                  "true"},
    ServerSetting{"enable_prompt_tokens_details", "true | false: usage carries prompt_tokens_details.cached_tokens",
                  "false"},
    ServerSetting{"api_key", "Bearer token required on the API (env SPARSESERVE_API_KEY); default none", nullptr},
    ServerSetting{"max_body_bytes", "Largest request body, e.g. 8MiB (larger: 413)", "8MiB"},
    ServerSetting{"max_prompt_tokens", "Longest prompt in tokens; 0 = the model's context", "0"},
    ServerSetting{"shutdown_grace_seconds", "Seconds in-flight requests may finish after SIGTERM", "20"},
    ServerSetting{"grpc_write_stall_seconds", "Seconds a gRPC reply may wait for the client to read it", "60"},
    ServerSetting{"log_level", "trace | debug | info | warn | error | off", "info"},
};

// One raw setting: its text (nullopt for YAML null) and where it came from.
struct Raw {
  std::optional<std::string> text;
  std::string where;  // "FILE:LINE" or "--flag"
};

[[noreturn]] void fail(const Raw& raw, const std::string& key, const std::string& problem) {
  throw InvalidArgument(raw.where + ": " + key + ": " + problem);
}

bool known_key(const std::string& key) {
  return std::any_of(kSettings.begin(), kSettings.end(), [&](const ServerSetting& s) { return key == s.key; });
}

std::string known_keys() {
  std::string out;
  for (const auto& s : kSettings) out += (out.empty() ? "" : ", ") + std::string(s.key);
  return out;
}

void read_yaml(const std::string& path, std::map<std::string, Raw>& raw) {
  std::string text;
  try {
    text = read_config_file(path);
  } catch (const ModelFileError& e) {  // missing, unreadable, a folder, a FIFO, too large
    throw InvalidArgument(e.what());
  }
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(text);
  } catch (const YAML::DeepRecursion& e) {  // yaml-cpp's own message for it is "bad file"
    throw InvalidArgument(path + ":" + std::to_string(e.mark.line + 1) + ": nested too deeply (" +
                          std::to_string(e.depth()) + " levels)");
  } catch (const YAML::Exception& e) {
    throw InvalidArgument(path + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (docs.size() > 1) throw InvalidArgument(path + ": several YAML documents (---); the settings are one mapping");
  const YAML::Node root = docs.empty() ? YAML::Node() : docs.front();
  if (root.IsNull()) return;  // an empty file: defaults
  const auto where = [&](const YAML::Node& n) { return path + ":" + std::to_string(n.Mark().line + 1); };
  if (!root.IsMap()) throw InvalidArgument(where(root) + ": expected a mapping of settings");
  for (const auto& kv : root) {
    if (!kv.first.IsScalar()) throw InvalidArgument(where(kv.first) + ": keys must be plain names");
    const std::string key = kv.first.as<std::string>();
    if (!known_key(key)) {
      throw InvalidArgument(where(kv.first) + ": unknown key '" + key + "' (known: " + known_keys() + ")");
    }
    if (raw.count(key)) {
      throw InvalidArgument(where(kv.first) + ": duplicate key '" + key + "'");
    }
    const YAML::Node& v = kv.second;
    if (v.IsNull()) {
      raw[key] = Raw{std::nullopt, where(v)};
    } else if (v.IsScalar()) {
      raw[key] = Raw{v.Scalar(), where(v)};
    } else {
      throw InvalidArgument(where(v) + ": " + key + ": expected a single value, not a list or mapping");
    }
  }
}

template <typename Int>
Int parse_int(const Raw& raw, const std::string& key, Int lo, Int hi) {
  const std::string& s = *raw.text;
  Int v{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < lo || v > hi) {
    fail(raw, key, "expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + s + "'");
  }
  return v;
}

double parse_seconds(const Raw& raw, const std::string& key) {
  const std::string& s = *raw.text;
  double v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || !std::isfinite(v) || v < 0 || v > 86400) {
    fail(raw, key, "expected a number of seconds in [0, 86400], got '" + s + "'");
  }
  return v;
}

double parse_fraction(const Raw& raw, const std::string& key) {
  const std::string& s = *raw.text;
  double v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || !(v > 0 && v <= 1)) {
    fail(raw, key, "expected a number in (0, 1], got '" + s + "'");
  }
  return v;
}

size_t parse_size(const Raw& raw, const std::string& key) {
  size_t v = 0;
  try {
    v = kvcache::parse_bytes(raw.text->c_str());
  } catch (const InvalidArgument& e) {
    fail(raw, key, e.what());
  }
  if (v == 0) fail(raw, key, "must be positive");
  return v;
}

std::string parse_choice(const Raw& raw, const std::string& key, std::initializer_list<const char*> choices) {
  std::string list;
  for (const char* c : choices) {
    if (*raw.text == c) return *raw.text;
    list += (list.empty() ? "" : " | ") + std::string(c);
  }
  fail(raw, key, "expected one of " + list + ", got '" + *raw.text + "'");
}

std::string parse_text(const Raw& raw, const std::string& key) {
  if (raw.text->empty()) fail(raw, key, "must not be empty");
  return *raw.text;
}

void apply(ServerConfig& c, const std::string& key, const Raw& raw) {
  if (!raw.text) {  // null: only where "none" means something
    if (key == "api_key") {
      c.api_key.reset();
    } else if (key == "model_config") {
      c.model_config.clear();
    } else if (key == "served_model_name") {
      c.served_model_name.clear();
    } else if (key == "default_profile") {
      c.default_profile.clear();
    } else if (key == "kv_cache_bytes") {
      c.kv_cache_bytes.reset();
    } else {
      fail(raw, key, "must not be null");
    }
    return;
  }
  constexpr int32_t kIntMax = std::numeric_limits<int32_t>::max();
  if (key == "host") {
    c.host = parse_text(raw, key);
  } else if (key == "http_port") {
    c.http_port = parse_int<int32_t>(raw, key, 1, 65535);
  } else if (key == "grpc_port") {
    c.grpc_port = parse_int<int32_t>(raw, key, 0, 65535);
  } else if (key == "model") {
    c.model = parse_text(raw, key);
  } else if (key == "load_format") {
    c.load_format = parse_choice(raw, key, {"auto", "dummy"});
  } else if (key == "generation_config") {
    c.generation_config = parse_choice(raw, key, {"auto", "vllm"});
  } else if (key == "model_config") {
    c.model_config = parse_text(raw, key);
  } else if (key == "served_model_name") {
    c.served_model_name = parse_text(raw, key);
  } else if (key == "backend") {
    const std::string b = parse_choice(raw, key, {"auto", "cpu", "cuda"});
#ifndef SPARSESERVE_SERVER_CUDA
    if (b == "cuda") fail(raw, key, "the CUDA backend is not available in this build (built without CUDA)");
#endif
    c.backend = b;  // `auto` is resolved at start, where the devices are known
  } else if (key == "default_profile") {
    c.default_profile = parse_text(raw, key);
  } else if (key == "kv_cache_bytes") {
    c.kv_cache_bytes = parse_size(raw, key);
  } else if (key == "gpu_memory_utilization") {
    c.gpu_memory_utilization = parse_fraction(raw, key);
  } else if (key == "max_num_seqs") {
    c.max_num_seqs = parse_int<int32_t>(raw, key, 1, 65536);
  } else if (key == "max_num_batched_tokens") {
    c.max_num_batched_tokens = parse_int<int32_t>(raw, key, 1, kIntMax);
  } else if (key == "max_waiting") {
    c.max_waiting = parse_int<int32_t>(raw, key, 1, 1 << 20);
  } else if (key == "enable_prefix_caching") {
    c.enable_prefix_caching = parse_choice(raw, key, {"true", "false"}) == "true";
  } else if (key == "enable_prompt_tokens_details") {
    c.enable_prompt_tokens_details = parse_choice(raw, key, {"true", "false"}) == "true";
  } else if (key == "api_key") {
    c.api_key = parse_text(raw, key);
  } else if (key == "max_body_bytes") {
    c.max_body_bytes = parse_size(raw, key);
  } else if (key == "max_prompt_tokens") {
    c.max_prompt_tokens = parse_int<int64_t>(raw, key, 0, kIntMax);
  } else if (key == "shutdown_grace_seconds") {
    c.shutdown_grace_seconds = parse_seconds(raw, key);
  } else if (key == "grpc_write_stall_seconds") {
    c.grpc_write_stall_seconds = parse_seconds(raw, key);
    if (c.grpc_write_stall_seconds < 0.001) fail(raw, key, "must be at least 0.001 (a millisecond)");
  } else if (key == "log_level") {
    c.log_level = parse_choice(raw, key, {"trace", "debug", "info", "warn", "error", "off"});
  } else {
    fail(raw, key, "unknown setting (known: " + known_keys() + ")");
  }
}

}  // namespace

std::span<const ServerSetting> server_settings() { return kSettings; }

EngineConfig ServerConfig::engine_config() const {
  EngineConfig e;
  e.max_num_seqs = max_num_seqs;
  e.max_num_batched_tokens = max_num_batched_tokens;
  e.kv_cache_bytes = kv_cache_bytes.value_or(size_t{2} << 30);
  e.max_waiting = max_waiting;
  e.enable_prefix_caching = enable_prefix_caching;
  return e;
}

ServerConfig ServerConfig::load(const std::string& yaml_path, const std::vector<Override>& overrides) {
  // Later sources replace earlier ones key by key; each value is checked where it came from.
  std::map<std::string, Raw> raw;
  if (!yaml_path.empty()) read_yaml(yaml_path, raw);
  for (const auto& o : overrides) {
    if (!known_key(o.key)) throw InvalidArgument(o.source + ": unknown setting '" + o.key + "'");
    raw[o.key] = Raw{o.value, o.source};
  }
  ServerConfig c;
  for (const auto& [key, value] : raw) apply(c, key, value);
  if (c.model.empty()) {
    throw InvalidArgument("model: required (set `model:` in the config file or pass --model)");
  }
  if (c.grpc_port != 0 && c.grpc_port == c.http_port) {
    throw InvalidArgument("grpc_port: " + std::to_string(c.grpc_port) + " is also the http_port");
  }
  return c;
}

}  // namespace sparseserve
